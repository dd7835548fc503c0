package main

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// writeLayout writes idx as an OCI image layout in dir (replacing what was
// there), its one entry named by tag: what `crane push DIR` and
// `skopeo copy oci:DIR` read.
func writeLayout(dir string, idx v1.ImageIndex, ref, tag string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		// The tag, as the OCI layout spec names an entry (skopeo's oci:DIR:TAG).
		"org.opencontainers.image.ref.name": tag,
		// The full name, which containerd (and so Docker's containerd
		// image store) gives the image it imports.
		"io.containerd.image.name": ref,
	}))
}

// dockerManifest is one entry of the manifest.json `docker save` writes,
// which Docker's classic image store needs to load an archive.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// writeArchive writes the layout in dir as one tar: an OCI archive
// (`skopeo copy oci-archive:`, and Docker with the containerd image store
// loads every platform from its index.json), plus a manifest.json naming
// the image of dockerPlatform, which Docker's classic store loads, as
// `docker save` has written both since Docker 25. Entries are sorted, owned
// by root, with fixed modes and mtime.
func writeArchive(file, dir string, idx v1.ImageIndex, dockerPlatform, ref string, mtime time.Time) error {
	manifest, err := dockerEntry(idx, dockerPlatform, ref)
	if err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	add := func(name string, mode int64, data []byte, dir bool) error {
		h := &tar.Header{Name: name, Mode: mode, ModTime: mtime.UTC(), Uname: "root", Gname: "root", Typeflag: tar.TypeReg, Size: int64(len(data)), Format: tar.FormatPAX}
		if dir {
			h.Typeflag, h.Size, h.Name = tar.TypeDir, 0, name+"/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	// WalkDir visits in lexical order; manifest.json sorts between
	// index.json and oci-layout.
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == "oci-layout" {
			if err := add("manifest.json", 0o644, manifest, false); err != nil {
				return err
			}
		}
		if d.IsDir() {
			return add(rel, 0o755, nil, true)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return add(rel, 0o644, data, false)
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func dockerEntry(idx v1.ImageIndex, platform, ref string) ([]byte, error) {
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Platform == nil || d.Platform.OS != want.OS || d.Platform.Architecture != want.Architecture {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, err
		}
		e := dockerManifest{Config: blobPath(m.Config.Digest), RepoTags: []string{ref}}
		for _, l := range m.Layers {
			e.Layers = append(e.Layers, blobPath(l.Digest))
		}
		return json.Marshal([]dockerManifest{e})
	}
	return nil, fmt.Errorf("no %s image in the index for docker load", platform)
}

func blobPath(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
