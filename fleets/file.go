package fleets

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The fleets file is read through YAML's node tree, not converted to JSON
// first, so that every error names the line it is about, and an unknown
// field the known one it most likely misspells.

// FieldError is a fleet's field that is wrong. Field is its name in the
// fleets file; Value is what it holds, as the error shows it ("" for
// none).
type FieldError struct {
	Fleet, Field, Value, Msg string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString("fleet ")
	if e.Fleet != "" {
		b.WriteString(e.Fleet + ": ")
	}
	b.WriteString(e.Field)
	if e.Value != "" {
		b.WriteString(" " + e.Value)
	}
	return b.String() + ": " + e.Msg
}

func fieldErr(fleet, field, value, format string, args ...any) error {
	return &FieldError{Fleet: fleet, Field: field, Value: value, Msg: fmt.Sprintf(format, args...)}
}

// fleetFields are the fields of a fleet in the file, in Fleet's
// order: their JSON names.
var fleetFields = func() []string {
	var out []string
	t := reflect.TypeFor[Fleet]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		out = append(out, name)
	}
	return out
}()

// File is a whole fleets file: its fleet-wide settings, as written (a
// field left out is zero), and its fleets, validated with defaults applied.
type File struct {
	Settings
	Fleets []Fleet
	// lines are the lines of the top-level fields the file sets.
	lines map[string]int
}

// Line is the line of the top-level field ("instanceTTL") in the file, 0
// when the file leaves it out.
func (f File) Line(field string) int { return f.lines[field] }

// Decode is ParseFile with the file's settings: the whole file at path
// (YAML or JSON). Its errors start with path:line.
func Decode(path string, data []byte) (File, error) {
	f, line, err := parseFile(data)
	if err == nil {
		return f, nil
	}
	if line > 0 {
		return File{}, fmt.Errorf("%s:%d: %w", path, line, err)
	}
	return File{}, fmt.Errorf("%s: %w", path, err)
}

// ParseFile is Parse for the file at path: its errors start
// with path:line. It checks the file's settings and drops them: Decode
// returns them.
func ParseFile(path string, data []byte) ([]Fleet, error) {
	f, err := Decode(path, data)
	return f.Fleets, err
}

// Parse decodes a fleets file (YAML or JSON), rejecting unknown
// fields, and validates every fleet with defaults applied. Its errors
// name the line ("line 7: ...").
func Parse(data []byte) ([]Fleet, error) {
	f, line, err := parseFile(data)
	if err != nil && line > 0 {
		return nil, fmt.Errorf("fleets file: line %d: %w", line, err)
	}
	if err != nil {
		return nil, fmt.Errorf("fleets file: %w", err)
	}
	return f.Fleets, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// parseFile returns the file, or the first error and its line (0: the
// whole file).
func parseFile(data []byte) (File, int, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := err.Error()
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			n, _ := strconv.Atoi(m[1])
			return File{}, n, errors.New("not valid YAML: " + msg[len(m[0]):])
		}
		return File{}, 0, errors.New("not valid YAML: " + strings.TrimPrefix(msg, "yaml: "))
	}
	noFleets := errors.New("no fleets defined (want a top-level `fleets:` list)")
	if len(doc.Content) == 0 {
		return File{}, 0, noFleets
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return File{}, root.Line, noFleets
	}
	file := File{lines: map[string]int{}}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if !contains(settingFields, k.Value) {
			return File{}, k.Line, unknownField(k.Value, settingFields)
		}
		file.lines[k.Value] = k.Line
		if k.Value == "fleets" {
			list = v
			continue
		}
		if line, err := decodeSetting(&file.Settings, k, v); err != nil {
			return File{}, line, err
		}
	}
	if list == nil || (list.Kind == yaml.ScalarNode && list.Tag == "!!null") {
		return File{}, 0, noFleets
	}
	if list.Kind != yaml.SequenceNode {
		return File{}, list.Line, errors.New("fleets: want a list of fleets")
	}
	if len(list.Content) == 0 {
		return File{}, list.Line, noFleets
	}
	file.Fleets = make([]Fleet, len(list.Content))
	first := map[string]int{}
	for i, n := range list.Content {
		fc, line, err := parseFleet(n)
		if err != nil {
			return File{}, line, err
		}
		if l, ok := first[fc.Name]; ok {
			return File{}, n.Line, fmt.Errorf("fleet %s: defined twice (first at line %d)", fc.Name, l)
		}
		first[fc.Name] = n.Line
		file.Fleets[i] = fc
	}
	return file, 0, nil
}

// decodeSetting decodes and checks the top-level setting k: v into s,
// returning the line of an error.
func decodeSetting(s *Settings, k, v *yaml.Node) (int, error) {
	var val any
	if err := v.Decode(&val); err != nil {
		return v.Line, fmt.Errorf("%s: %w", k.Value, err)
	}
	if err := decodeField(s, k.Value, val); err != nil {
		return v.Line, err
	}
	if err := checkSetting(*s, k.Value); err != nil {
		return k.Line, err
	}
	return 0, nil
}

// parseFleet decodes and validates one fleet of the list.
func parseFleet(n *yaml.Node) (Fleet, int, error) {
	var fc Fleet
	if n.Kind != yaml.MappingNode {
		return fc, n.Line, errors.New("fleets: each entry must be a fleet (name: ..., maxConnectionsPerPod: ...)")
	}
	lines := map[string]int{}
	name := ""
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Value == "name" {
			name = n.Content[i+1].Value
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !contains(fleetFields, k.Value) {
			return fc, k.Line, prefixFleet(name, unknownField(k.Value, fleetFields))
		}
		lines[k.Value] = k.Line
		var val any
		if err := v.Decode(&val); err != nil {
			return fc, v.Line, prefixFleet(name, fmt.Errorf("%s: %w", k.Value, err))
		}
		if z, ok := explicitZero(k.Value, val); ok {
			return fc, k.Line, fieldErr(name, k.Value, fmt.Sprint(val), "%s (leave it out for the default %s)", z.want, z.def)
		}
		if err := decodeField(&fc, k.Value, val); err != nil {
			return fc, v.Line, prefixFleet(name, err)
		}
	}
	fc = fc.WithDefaults()
	if err := fc.Validate(); err != nil {
		line := n.Line
		var fe *FieldError
		if errors.As(err, &fe) && lines[fe.Field] > 0 {
			line = lines[fe.Field]
		}
		return fc, line, err
	}
	return fc, 0, nil
}

// decodeField sets field of dst (a *Fleet or *Settings) from its YAML
// value, with the JSON decoding the fields define (Duration's "5s").
func decodeField(dst any, field string, val any) error {
	raw, err := json.Marshal(map[string]any{field: val})
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%s %s: want %s", field, show(val), kindName(te.Type))
		}
		return fmt.Errorf("%s %s: %w", field, show(val), unwrapJSON(err))
	}
	return nil
}

// unwrapJSON drops encoding/json's "json: " wording from an error a field's
// own decoder returned.
func unwrapJSON(err error) error {
	return errors.New(strings.TrimPrefix(err.Error(), "json: "))
}

func show(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	}
	return t.String()
}

func prefixFleet(name string, err error) error {
	if name == "" {
		return err
	}
	return fmt.Errorf("fleet %s: %w", name, err)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// unknownField names field and the known one closest to it, if any is
// close enough to be a misspelling.
func unknownField(field string, known []string) error {
	best, dist := "", len(field)/2+2
	for _, k := range known {
		if d := editDistance(strings.ToLower(field), strings.ToLower(k)); d < dist {
			best, dist = k, d
		}
	}
	if best != "" {
		return fmt.Errorf("unknown field %q (did you mean %q?)", field, best)
	}
	return fmt.Errorf("unknown field %q (known: %s)", field, strings.Join(known, ", "))
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
