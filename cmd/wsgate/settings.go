package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/wsgate/wsgate/fleets"
)

// The fleet-wide settings (instance TTL, expired mode) must be the same in
// every tracker and the scaler of a fleet, so they are the fleets file's,
// which all of them read. --instance-ttl and --expired-instances, where
// they used to be, stay for one release as deprecated overrides: when set
// they win, and the process warns, naming the file's field.

// settingFlags are the deprecated flags of the fleet-wide settings.
type settingFlags struct {
	fs      *flag.FlagSet
	ttl     time.Duration
	expired string
}

// settingField names each setting's flag and fleets-file field.
var settingField = map[string]struct{ flag, field string }{
	"InstanceTTL":      {"--instance-ttl", "instanceTTL"},
	"ExpiredInstances": {"--expired-instances", "expiredInstances"},
}

// isSettingFlag reports whether name (as the flag package has it:
// "instance-ttl") is a deprecated flag of a setting.
func isSettingFlag(name string) bool {
	for _, sf := range settingField {
		if sf.flag == "--"+name {
			return true
		}
	}
	return false
}

// printNotes writes notes for a --check-config run, which makes no logger.
func printNotes(notes []settingNote) {
	for _, n := range notes {
		fmt.Fprintln(os.Stderr, "warning: "+n.String())
	}
}

// registerSettingFlags registers the deprecated flags on fs; their help
// says what each setting does (ttl, expired).
func registerSettingFlags(fs *flag.FlagSet, ttl, expired string) *settingFlags {
	s := &settingFlags{fs: fs}
	fs.DurationVar(&s.ttl, "instance-ttl", 0, "deprecated: set instanceTTL in the fleets file (default 10s); when given, overrides it. "+ttl)
	fs.StringVar(&s.expired, "expired-instances", "", "deprecated: set expiredInstances in the fleets file (default "+string(fleets.DefaultExpiredInstances)+"); when given, overrides it. "+expired)
	return s
}

// given reports whether the command line (or WSGATE_*) set the flag of
// setting ("InstanceTTL").
func (s *settingFlags) given(setting string) bool {
	set := false
	if s == nil || s.fs == nil {
		return false // built without flags (tests)
	}
	s.fs.Visit(func(f *flag.Flag) { set = set || "--"+f.Name == settingField[setting].flag })
	return set
}

// settingNote is a deprecated flag in use: what the process logs.
type settingNote struct {
	flag, value, field, fileValue, at string
}

func (n settingNote) String() string {
	switch {
	case n.fileValue == "":
		return fmt.Sprintf("%s is deprecated and goes away in the next release: write `%s: %s` in the fleets file (%s) instead", n.flag, n.field, n.value, n.at)
	case n.fileValue == n.value:
		return fmt.Sprintf("%s is deprecated and goes away in the next release: the fleets file (%s) sets %s %s already; drop the flag", n.flag, n.at, n.field, n.value)
	}
	return fmt.Sprintf("%s %s overrides the fleets file's %s %s (%s): they disagree and the flag wins in this process; the flag is deprecated and goes away in the next release, so make the file say what every tracker and the scaler should hold and drop the flag", n.flag, n.value, n.field, n.fileValue, n.at)
}

// log writes n as a warning.
func (n settingNote) log(log *slog.Logger) {
	log.Warn(n.String(), "flag", n.flag, "value", n.value, "field", n.field, "fileValue", n.fileValue, "config", n.at)
}

// resolve returns the settings in force: the file's (path, as written in
// f), with defaults, each overridden by its flag when given; and a note per
// flag given.
func (s *settingFlags) resolve(path string, f fleets.File) (fleets.Settings, []settingNote, error) {
	eff := f.Settings.WithDefaults()
	var notes []settingNote
	note := func(setting, value, fileValue string) {
		sf := settingField[setting]
		at := path
		if l := f.Line(sf.field); l > 0 {
			at = fmt.Sprintf("%s:%d", path, l)
		}
		notes = append(notes, settingNote{flag: sf.flag, value: value, field: sf.field, fileValue: fileValue, at: at})
	}
	if s.given("InstanceTTL") {
		if s.ttl <= 0 {
			return eff, nil, fmt.Errorf("--instance-ttl %s: must be positive (leave it out for the fleets file's instanceTTL, default %s)", s.ttl, fleets.DefaultInstanceTTL)
		}
		fileValue := ""
		if f.InstanceTTL != 0 {
			fileValue = time.Duration(f.InstanceTTL).String()
		}
		note("InstanceTTL", s.ttl.String(), fileValue)
		eff.InstanceTTL = fleets.Duration(s.ttl)
	}
	if s.given("ExpiredInstances") {
		m := fleets.ExpiredMode(s.expired)
		if m.Validate() != nil {
			return eff, nil, fmt.Errorf("--expired-instances %s: want reap, keep or kube", strconv.Quote(s.expired))
		}
		note("ExpiredInstances", s.expired, string(f.ExpiredInstances))
		eff.ExpiredInstances = m
	}
	return eff, notes, nil
}

// settingName names the setting ("InstanceTTL") as the user wrote it, for
// an error about its value: the flag when given, else the fleets file's
// field, after the file and line ("--config fleets.yaml:3: instanceTTL")
// or, when the file leaves it out, marked as the default.
func (s *settingFlags) settingName(setting, path string, f fleets.File) (prefix, name, valueNote string) {
	sf := settingField[setting]
	if s.given(setting) {
		return "", sf.flag, ""
	}
	if l := f.Line(sf.field); l > 0 {
		return fmt.Sprintf("--config %s:%d: ", path, l), sf.field, ""
	}
	return fmt.Sprintf("--config %s: ", path), sf.field, " (the default)"
}

// reloadSettings checks a changed fleets file's settings against those in
// force (running): the tracker and the scaler take them at start only, so
// a change is refused whole, fleets included, rather than half-applied.
// It returns the notes of the flags that now disagree with the file.
func (s *settingFlags) reloadSettings(path string, f fleets.File, running fleets.Settings) ([]settingNote, error) {
	next, notes, err := s.resolve(path, f)
	if err != nil {
		return nil, err
	}
	restart := func(field, now, was string) error {
		at := path
		if l := f.Line(field); l > 0 {
			at = fmt.Sprintf("%s:%d", path, l)
		}
		return fmt.Errorf("%s: %s %s, was %s: takes a restart, so the changed file is refused whole, fleets included; restart every tracker and the scaler to apply it", at, field, now, was)
	}
	if next.InstanceTTL != running.InstanceTTL {
		return nil, restart("instanceTTL", time.Duration(next.InstanceTTL).String(), time.Duration(running.InstanceTTL).String())
	}
	if next.ExpiredInstances != running.ExpiredInstances {
		return nil, restart("expiredInstances", string(next.ExpiredInstances), string(running.ExpiredInstances))
	}
	var disagree []settingNote
	for _, n := range notes {
		if n.fileValue != "" && n.fileValue != n.value {
			disagree = append(disagree, n)
		}
	}
	return disagree, nil
}

// loadedFleets is the fleets file both processes start from: its bytes
// (the watcher's baseline), what it decodes to, and the fleet-wide
// settings in force after the deprecated flags.
type loadedFleets struct {
	data     []byte
	file     fleets.File
	settings fleets.Settings
	notes    []settingNote
}

// loadFleetsFile reads --config at path and resolves its settings against
// the deprecated flags s; errors name the flag, or the file and its line.
func loadFleetsFile(path string, s *settingFlags) (loadedFleets, error) {
	if path == "" {
		return loadedFleets{}, errors.New("--config: a fleets file is required (see fleets/fleets.example.yaml)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return loadedFleets{}, fmt.Errorf("--config: %w", err)
	}
	file, err := fleets.Decode(path, data)
	if err != nil {
		return loadedFleets{}, fmt.Errorf("--config: %w", err)
	}
	settings, notes, err := s.resolve(path, file)
	if err != nil {
		return loadedFleets{}, err
	}
	return loadedFleets{data: data, file: file, settings: settings, notes: notes}, nil
}
