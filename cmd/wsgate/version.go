package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/wsgate/wsgate/buildinfo"
)

func init() { commands["version"] = func(args []string) error { return runVersion(os.Stdout, args) } }

// runVersion prints which build this is: the same values as the
// wsgate_build_info metric and the image's OCI labels.
func runVersion(w io.Writer, args []string) error {
	fs := flag.NewFlagSet("wsgate version", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	i := buildinfo.Read()
	if *asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(i)
	}
	_, err := fmt.Fprintf(w, "wsgate %s\n  revision  %s\n  date      %s (the commit's time)\n  go        %s %s\n",
		i.Version, i.Revision, i.Date, i.GoVersion, i.Platform)
	return err
}
