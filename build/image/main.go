// Command image builds wsgate's container image without a Docker daemon
// and without a registry: an OCI image index of one image per platform on
// an empty base, each of one layer holding the static binary and the CA
// certificates, with fixed timestamps (the commit's time), modes and
// order, so that two builds of one commit have one digest.
//
// It writes DIR/oci (an OCI image layout: `crane push`, `skopeo copy oci:`)
// and DIR/wsgate.oci.tar (an OCI archive with Docker's manifest.json:
// `docker load`, `skopeo copy oci-archive:`). `make image` runs it; it
// lives in a module of its own so that go-containerregistry stays out of
// wsgate's go.mod.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	s := spec{Binaries: map[string]string{}}
	out := fs.String("out", "bin/image", "directory to write oci/ and wsgate.oci.tar into")
	repo := fs.String("repository", "ghcr.io/wsgate/wsgate", "the name docker load gives the image (with --version as its tag)")
	epoch := fs.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "the commit's time in Unix seconds: every timestamp of the image")
	dockerPlatform := fs.String("docker-platform", "linux/amd64", "the platform manifest.json names, for Docker's classic image store")
	fs.StringVar(&s.Version, "version", "", "the stamped version (org.opencontainers.image.version, and the tag)")
	fs.StringVar(&s.Revision, "revision", "", "the commit (org.opencontainers.image.revision)")
	fs.StringVar(&s.Source, "source", "https://github.com/wsgate/wsgate", "org.opencontainers.image.source")
	fs.StringVar(&s.Title, "title", "wsgate", "org.opencontainers.image.title")
	fs.StringVar(&s.CABundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA certificates in PEM (Debian's ca-certificates)")
	fs.Func("binary", "PLATFORM=PATH of a static wsgate binary, e.g. linux/amd64=bin/image/linux/amd64/wsgate (repeat per platform)", func(v string) error {
		p, file, ok := strings.Cut(v, "=")
		if !ok || p == "" || file == "" {
			return fmt.Errorf("want PLATFORM=PATH, got %q", v)
		}
		s.Binaries[p] = file
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if s.Version == "" || s.Revision == "" {
		return fmt.Errorf("--version and --revision are required (make image sets them from git)")
	}
	if len(s.Binaries) == 0 {
		return fmt.Errorf("no --binary given")
	}
	sec, err := strconv.ParseInt(*epoch, 10, 64)
	if err != nil {
		return fmt.Errorf("--source-date-epoch %q: want the commit's time in Unix seconds (git log -1 --format=%%ct)", *epoch)
	}
	s.Created = time.Unix(sec, 0).UTC()

	idx, err := buildIndex(s)
	if err != nil {
		return err
	}
	ref := *repo + ":" + s.Version
	dir := filepath.Join(*out, "oci")
	if err := writeLayout(dir, idx, ref, s.Version); err != nil {
		return fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	archive := filepath.Join(*out, "wsgate.oci.tar")
	if err := writeArchive(archive, dir, idx, *dockerPlatform, ref, s.Created); err != nil {
		return fmt.Errorf("archive %s: %w", archive, err)
	}
	digest, err := idx.Digest()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "digest"), []byte(digest.String()+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("image %s %s\n  layout  %s\n  archive %s\n", ref, digest, dir, archive)
	return nil
}
