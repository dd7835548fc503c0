package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's fixed parts. The binary runs as a numeric non-root user, so
// no /etc/passwd is needed (Kubernetes' runAsNonRoot can check a number,
// not a name); 65532 is the "nonroot" of distroless images, which the
// chart's securityContext expects.
const (
	binaryPath = "/wsgate"
	caPath     = "/etc/ssl/certs/ca-certificates.crt" // the first file Go's crypto/x509 reads on Linux
	user       = "65532:65532"
)

// spec is what one build of the image is made of: the stamped values and
// the files that go in.
type spec struct {
	Version, Revision, Source, Title string
	Created                          time.Time         // the commit's time
	Binaries                         map[string]string // platform (linux/amd64) -> path of its static binary
	CABundle                         string            // path of the CA certificates in PEM
}

// labels are the OCI annotations the image config and the index carry.
func (s spec) labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":    s.Title,
		"org.opencontainers.image.version":  s.Version,
		"org.opencontainers.image.revision": s.Revision,
		"org.opencontainers.image.source":   s.Source,
		"org.opencontainers.image.created":  s.Created.UTC().Format(time.RFC3339),
	}
}

// platforms are spec's platforms in a fixed order, so that the index lists
// its manifests the same way every time.
func (s spec) platforms() []string {
	ps := make([]string, 0, len(s.Binaries))
	for p := range s.Binaries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// buildIndex assembles the image index: on an empty base (nothing is
// pulled), one image per platform of one layer each.
func buildIndex(s spec) (v1.ImageIndex, error) {
	ca, err := os.ReadFile(s.CABundle)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w (on Debian: apt-get install ca-certificates)", err)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range s.platforms() {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", p, err)
		}
		if plat.Architecture == "arm64" && plat.Variant == "" {
			plat.Variant = "v8" // as registries and runtimes normalise it
		}
		bin, err := os.ReadFile(s.Binaries[p])
		if err != nil {
			return nil, fmt.Errorf("binary for %s: %w", p, err)
		}
		img, err := buildImage(s, *plat, bin, ca)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: plainImage{img}, Descriptor: v1.Descriptor{Platform: plat}})
	}
	return mutate.Annotations(idx, s.labels()).(v1.ImageIndex), nil
}

// plainImage is an image whose index entry has no artifactType.
// go-containerregistry would set it to the config's media type, which the
// OCI 1.1 spec allows, but older clients (skopeo 1.9, Debian 12's) do not
// know the field and rewrite the index when they copy it: the pushed
// digest would then differ from the one built.
type plainImage struct{ v1.Image }

func (plainImage) ArtifactType() (string, error) { return "", nil }

func buildImage(s spec, plat v1.Platform, bin, ca []byte) (v1.Image, error) {
	layer, err := rootLayer([]file{
		{name: "etc/", mode: 0o755},
		{name: "etc/ssl/", mode: 0o755},
		{name: "etc/ssl/certs/", mode: 0o755},
		{name: caPath[1:], mode: 0o644, data: ca},
		{name: binaryPath[1:], mode: 0o755, data: bin},
	}, s.Created)
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: s.Created.UTC()}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: plat.Architecture,
		OS:           plat.OS,
		Variant:      plat.Variant,
		Created:      created,
		Config: v1.Config{
			User:       user,
			Entrypoint: []string{binaryPath},
			WorkingDir: "/",
			Labels:     s.labels(),
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	return mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created:   created,
		CreatedBy: "make image (build/image)",
		Comment:   "the static wsgate binary and CA certificates",
	}})
}

// file is one entry of the layer; a name ending in / is a directory.
type file struct {
	name string
	mode int64
	data []byte
}

// rootLayer is a gzipped tar of files, in the order given (parents first),
// owned by root, with fixed modes and the commit's time: the same bytes on
// every build. It is compressed once, here, so the layer's digest is that
// of these very bytes.
func rootLayer(files []file, mtime time.Time) (v1.Layer, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime.UTC(), Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if path.Clean(f.name) != f.name {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression) // no name, no time in its header
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(zw, &raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}
