package scaler_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wsgate/wsgate/scaler"
)

type pair struct{ certPEM, keyPEM []byte }

// issue makes a certificate signed by parent (self-signed when nil).
func issue(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey, pair) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	tmpl(c)
	signer, signKey := c, key
	if parent != nil {
		signer, signKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, c, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	return cert, key, pair{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})}
}

type pki struct {
	caPEM          []byte
	server, client pair
	dir            string
}

func newPKI(t *testing.T) pki {
	ca, caKey, caPair := issue(t, "wsgate test CA", nil, nil, func(c *x509.Certificate) {
		c.IsCA, c.BasicConstraintsValid, c.KeyUsage = true, true, x509.KeyUsageCertSign
	})
	_, _, server := issue(t, "wsgate-scaler", ca, caKey, func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	_, _, client := issue(t, "keda-operator", ca, caKey, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	p := pki{caPEM: caPair.certPEM, server: server, client: client, dir: t.TempDir()}
	for name, b := range map[string][]byte{"ca.pem": p.caPEM, "tls.crt": server.certPEM, "tls.key": server.keyPEM} {
		if err := os.WriteFile(filepath.Join(p.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p pki) file(name string) string { return filepath.Join(p.dir, name) }

// kedaClientTLS builds the client side as KEDA does from the external
// trigger's caCert, tlsClientCert and tlsClientKey (PEM contents).
func kedaClientTLS(t *testing.T, caCert []byte, clientCert *pair) *tls.Config {
	t.Helper()
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: x509.NewCertPool()}
	c.RootCAs.AppendCertsFromPEM(caCert)
	if clientCert != nil {
		cert, err := tls.X509KeyPair(clientCert.certPEM, clientCert.keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

func TestTLSHandshake(t *testing.T) {
	p := newPKI(t)
	serverTLS, err := scaler.LoadTLS(p.file("tls.crt"), p.file("tls.key"), "")
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, opts{tls: serverTLS, dialTLS: kedaClientTLS(t, p.caPEM, nil)})
	e.tracker("envoy-a")
	if e.active("fleet", "web") {
		t.Error("active over TLS without connections")
	}
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	serverTLS, err := scaler.LoadTLS(p.file("tls.crt"), p.file("tls.key"), p.file("ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, opts{tls: serverTLS, dialTLS: kedaClientTLS(t, p.caPEM, &p.client)})
	e.tracker("envoy-a")
	e.active("fleet", "web")

	// Without a client certificate the handshake fails.
	anon := start(t, opts{tls: serverTLS, dialTLS: kedaClientTLS(t, p.caPEM, nil)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := anon.client.IsActive(ctx, ref("fleet", "web")); err == nil {
		t.Error("mTLS server answered a client without a certificate")
	}
	// Plaintext is refused by a TLS server.
	plain := start(t, opts{tls: serverTLS})
	if _, err := plain.client.IsActive(ctx, ref("fleet", "web")); err == nil {
		t.Error("TLS server answered a plaintext client")
	}
	// Each refusal is counted (and logged), not dropped in silence.
	for name, env := range map[string]*env{"no client certificate": anon, "plaintext": plain} {
		deadline := time.Now().Add(30 * time.Second)
		for handshakeFailures(t, env) < 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no TLS handshake failure counted", name)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if n := handshakeFailures(t, e); n != 0 {
		t.Errorf("a client with its certificate counted %v handshake failures", n)
	}
}

func handshakeFailures(t *testing.T, e *env) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "wsgate_scaler_tls_handshake_failures_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func TestLoadTLSRejectsIncompleteSettings(t *testing.T) {
	p := newPKI(t)
	for _, c := range [][3]string{{p.file("tls.crt"), "", ""}, {"", "", p.file("ca.pem")}, {p.file("tls.crt"), p.file("tls.key"), p.file("tls.key")}} {
		if _, err := scaler.LoadTLS(c[0], c[1], c[2]); err == nil {
			t.Errorf("LoadTLS%v: no error", c)
		}
	}
	if c, err := scaler.LoadTLS("", "", ""); c != nil || err != nil {
		t.Errorf("no TLS flags: %v %v, want plaintext", c, err)
	}
}
