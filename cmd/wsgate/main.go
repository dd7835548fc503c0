// Command wsgate is the one binary of wsgate: the tracker sidecar, the KEDA
// external scaler, the operators' metrics view and the demo. This package
// only parses flags and wires components with fx; the work is in the
// packages it composes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `wsgate: one shared view of WebSocket connections for an Envoy fleet.

Usage:
  wsgate tracker [flags]   the Envoy sidecar: admission API and access-log receiver
  wsgate scaler  [flags]   the KEDA external scaler, pod discovery and deletion cost
  wsgate metrics [view] [flags]   the operator's view of the state in Redis
  wsgate forget-instance --fleet F ID   give back a dead instance's slots (expiredInstances: keep)
  wsgate forget-layout --fleet F   let a drained fleet take new shards (README, "Sharded fleets")
  wsgate demo    [flags]   the whole system on this machine, with an embedded Redis
  wsgate version [--json]  which build this is: version, commit, commit time

Run "wsgate <command> -h" for a command's flags. Every flag can also be set
from the environment as WSGATE_<FLAG> (--redis-addr: WSGATE_REDIS_ADDR).
`

// commands maps a subcommand to its runner; each lives in a file of its own.
var commands = map[string]func(args []string) error{}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Print(usage)
		return
	}
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "wsgate: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "wsgate %s: %v\n", name, err)
		os.Exit(1)
	}
}
