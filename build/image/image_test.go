package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// The image is built by `make image` itself, twice, into two directories:
// every test reads the first; TestReproducible compares the two.
var built struct {
	a, b     string // IMAGE_DIRs
	err      error
	revision string
	commit   time.Time
}

func TestMain(m *testing.M) {
	tmp, err := os.MkdirTemp("", "wsgate-image-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	built.a, built.b = filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	built.err = buildTwice()
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

func buildTwice() error {
	root, err := filepath.Abs("../..")
	if err != nil {
		return err
	}
	for _, dir := range []string{built.a, built.b} {
		cmd := exec.Command("make", "-s", "-C", root, "image", "IMAGE_DIR="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("make image IMAGE_DIR=%s: %v\n%s", dir, err, out)
		}
	}
	rev, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		return fmt.Errorf("git rev-parse: %w", err)
	}
	built.revision = strings.TrimSpace(string(rev))
	ct, err := exec.Command("git", "-C", root, "log", "-1", "--format=%ct").Output()
	if err != nil {
		return fmt.Errorf("git log: %w", err)
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(ct)), 10, 64)
	built.commit = time.Unix(sec, 0).UTC()
	return err
}

// index reads the OCI layout `make image` wrote, as `crane push DIR` does:
// one entry, itself an image index.
func index(t *testing.T, dir string) v1.ImageIndex {
	t.Helper()
	if built.err != nil {
		t.Fatal(built.err)
	}
	l, err := layout.ImageIndexFromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := l.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || !m.Manifests[0].MediaType.IsIndex() {
		t.Fatalf("index.json lists %v, want one image index", m.Manifests)
	}
	idx, err := l.ImageIndex(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// images are the index's images by platform (linux/amd64, linux/arm64/v8).
func images(t *testing.T, idx v1.ImageIndex) map[string]v1.Image {
	t.Helper()
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	imgs := map[string]v1.Image{}
	for _, d := range m.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		imgs[d.Platform.String()] = img
	}
	return imgs
}

func TestReproducible(t *testing.T) {
	a, b := index(t, built.a), index(t, built.b)
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds of one commit: index digests %s and %s", da, db)
	}
	for _, f := range []string{"wsgate.oci.tar", "digest"} {
		if sa, sb := sum(t, filepath.Join(built.a, f)), sum(t, filepath.Join(built.b, f)); sa != sb {
			t.Errorf("%s differs between two builds: %s, %s", f, sa, sb)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(built.a, "digest")); strings.TrimSpace(string(got)) != da.String() {
		t.Errorf("digest file says %q, the index is %s", got, da)
	}
	t.Logf("image index %s", da)
}

func sum(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// TestIndexIsValid: what `crane validate` checks (every digest, size and
// diff id), for both platforms.
func TestIndexIsValid(t *testing.T) {
	idx := index(t, built.a)
	if err := validate.Index(idx); err != nil {
		t.Fatal(err)
	}
	// No artifactType on the entries: skopeo 1.9 would rewrite the index
	// (see plainImage), and the pushed digest would not be the built one.
	m, _ := idx.IndexManifest()
	for _, d := range m.Manifests {
		if d.ArtifactType != "" {
			t.Errorf("%s: artifactType %q", d.Platform, d.ArtifactType)
		}
	}
	imgs := images(t, idx)
	if len(imgs) != 2 || imgs["linux/amd64"] == nil || imgs["linux/arm64/v8"] == nil {
		t.Errorf("platforms %v, want linux/amd64 and linux/arm64/v8", keys(imgs))
	}
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestConfig(t *testing.T) {
	idx := index(t, built.a)
	version := stampedVersion(t)
	for plat, img := range images(t, idx) {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if got := cf.Platform().String(); got != plat {
			t.Errorf("%s: config platform %s", plat, got)
		}
		c := cf.Config
		if c.User != "65532:65532" {
			t.Errorf("%s: user %q, want the numeric non-root 65532:65532", plat, c.User)
		}
		if len(c.Entrypoint) != 1 || c.Entrypoint[0] != "/wsgate" || len(c.Cmd) != 0 {
			t.Errorf("%s: entrypoint %q cmd %q, want [/wsgate] and none", plat, c.Entrypoint, c.Cmd)
		}
		want := map[string]string{
			"org.opencontainers.image.title":    "wsgate",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.revision": built.revision,
			"org.opencontainers.image.source":   "https://github.com/wsgate/wsgate",
			"org.opencontainers.image.created":  built.commit.Format(time.RFC3339),
		}
		for k, v := range want {
			if c.Labels[k] != v {
				t.Errorf("%s: label %s = %q, want %q", plat, k, c.Labels[k], v)
			}
		}
		if !cf.Created.Equal(built.commit) {
			t.Errorf("%s: created %v, want the commit's time %v", plat, cf.Created, built.commit)
		}
	}
}

// stampedVersion is the version the Makefile stamps.
func stampedVersion(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("make", "-s", "-C", "../..", "print-version").Output()
	if err != nil {
		t.Fatalf("make print-version: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// entry is one file of a layer.
type entry struct {
	hdr  *tar.Header
	data []byte
}

func layerFiles(t *testing.T, img v1.Image) []entry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want one", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var files []entry
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, entry{h, data})
	}
}

// TestLayer: the layer holds the binary and the CA certificates and nothing
// else (no shell, no package manager, no passwd), owned by root (the
// non-root user cannot change them), with fixed modes and the commit's time.
func TestLayer(t *testing.T) {
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatalf("Debian's ca-certificates: %v", err)
	}
	machine := map[string]elf.Machine{"linux/amd64": elf.EM_X86_64, "linux/arm64/v8": elf.EM_AARCH64}
	for plat, img := range images(t, index(t, built.a)) {
		files := layerFiles(t, img)
		var names []string
		for _, f := range files {
			names = append(names, fmt.Sprintf("%s %o", f.hdr.Name, f.hdr.Mode))
			if f.hdr.Uid != 0 || f.hdr.Gid != 0 || !f.hdr.ModTime.Equal(built.commit) {
				t.Errorf("%s: %s owned by %d:%d, time %v", plat, f.hdr.Name, f.hdr.Uid, f.hdr.Gid, f.hdr.ModTime)
			}
			switch f.hdr.Name {
			case "etc/ssl/certs/ca-certificates.crt":
				if !bytes.Equal(f.data, ca) {
					t.Errorf("%s: the CA bundle is not this machine's Debian ca-certificates", plat)
				}
			case "wsgate":
				e, err := elf.NewFile(bytes.NewReader(f.data))
				if err != nil {
					t.Fatalf("%s: /wsgate: %v", plat, err)
				}
				if e.Machine != machine[plat] {
					t.Errorf("%s: /wsgate is for %v", plat, e.Machine)
				}
				for _, p := range e.Progs {
					if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
						t.Errorf("%s: /wsgate is dynamically linked", plat)
					}
				}
				if e.Section(".symtab") != nil {
					t.Errorf("%s: /wsgate is not stripped", plat)
				}
			}
		}
		want := "etc/ 755,etc/ssl/ 755,etc/ssl/certs/ 755,etc/ssl/certs/ca-certificates.crt 644,wsgate 755"
		if got := strings.Join(names, ","); got != want {
			t.Errorf("%s: layer holds\n  %s\nwant\n  %s", plat, got, want)
		}
	}
}

// TestBinaryPrintsTheStamp runs the binary taken out of the layer of this
// machine's platform: `wsgate version` says what the labels say.
func TestBinaryPrintsTheStamp(t *testing.T) {
	plat := "linux/" + runtime.GOARCH
	if runtime.GOARCH == "arm64" {
		plat += "/v8"
	}
	img := images(t, index(t, built.a))[plat]
	if runtime.GOOS != "linux" || img == nil {
		t.Skipf("no image for this machine's platform %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	bin := filepath.Join(t.TempDir(), "wsgate")
	for _, f := range layerFiles(t, img) {
		if f.hdr.Name == "wsgate" {
			if err := os.WriteFile(bin, f.data, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("wsgate version --json: %v", err)
	}
	var got struct{ Version, Revision, Date, GoVersion, Platform string }
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("wsgate version --json: %v\n%s", err, out)
	}
	cf, _ := img.ConfigFile()
	l := cf.Config.Labels
	if got.Version != l["org.opencontainers.image.version"] || got.Revision != l["org.opencontainers.image.revision"] ||
		got.Date != l["org.opencontainers.image.created"] || got.Platform != "linux/"+runtime.GOARCH {
		t.Errorf("wsgate version --json = %s\nlabels %v", out, l)
	}
	plain, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(plain), "wsgate "+got.Version+"\n") {
		t.Errorf("wsgate version = %q, %v", plain, err)
	}
}

// TestArchive: the tar holds the same OCI layout (skopeo copy
// oci-archive:) and a manifest.json naming the linux/amd64 image under
// IMAGE_REPO:VERSION (docker load; crane push FILE reads it the same way).
func TestArchive(t *testing.T) {
	idx := index(t, built.a)
	dir := t.TempDir()
	f, err := os.Open(filepath.Join(built.a, "wsgate.oci.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			err = os.MkdirAll(p, 0o755)
		} else {
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"blobs/", "blobs/sha256/"}; len(names) < 5 || names[0] != want[0] || names[1] != want[1] ||
		strings.Join(names[len(names)-3:], ",") != "index.json,manifest.json,oci-layout" {
		t.Errorf("archive entries %v", names)
	}
	l, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("oci-archive as a layout: %v", err)
	}
	im, _ := l.IndexManifest()
	want, _ := idx.Digest()
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want {
		t.Errorf("archive's index.json %v, want the image index %s", im.Manifests, want)
	}
	if ref := im.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; ref != stampedVersion(t) {
		t.Errorf("archive's ref.name %q, want the version", ref)
	}

	tag, err := name.NewTag("ghcr.io/wsgate/wsgate:" + stampedVersion(t))
	if err != nil {
		t.Fatal(err)
	}
	docker, err := tarball.ImageFromPath(filepath.Join(built.a, "wsgate.oci.tar"), &tag)
	if err != nil {
		t.Fatalf("manifest.json (docker load): %v", err)
	}
	if err := validate.Image(docker); err != nil {
		t.Fatalf("manifest.json's image: %v", err)
	}
	dd, _ := docker.ConfigName()
	amd, _ := images(t, idx)["linux/amd64"].ConfigName()
	if dd != amd {
		t.Errorf("manifest.json's image has config %s, the linux/amd64 image %s", dd, amd)
	}
}

// TestPush pushes the layout as `crane push DIR REF` does to a registry
// (go-containerregistry's own, in process) and reads it back by tag: the
// registry holds the same index, both platforms.
func TestPush(t *testing.T) {
	idx := index(t, built.a)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref, err := name.ParseReference(u.Host + "/wsgate/wsgate:test")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("push: %v", err)
	}
	got, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	gd, _ := got.Digest()
	wd, _ := idx.Digest()
	if gd != wd {
		t.Errorf("pulled %s, pushed %s", gd, wd)
	}
	if err := validate.Index(got); err != nil {
		t.Errorf("pulled index: %v", err)
	}
}
