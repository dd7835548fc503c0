package kube_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wsgate/wsgate/test/redistest"
)

// A real control plane: etcd from Debian's etcd-server, kube-apiserver and
// kube-controller-manager built from k8s.io/kubernetes (test/kube/tools pins
// the release) on loopback, RBAC on. No kubelet, no scheduler: the tests play
// the kubelet.

const adminToken = "wsgate-test-admin"

var binDir string // where kube-apiserver and kube-controller-manager are built

// TestMain builds the control plane once per run; Go's build cache makes
// every build after the first a link only.
func TestMain(m *testing.M) {
	ci := os.Getenv("CI") == "true"
	why := ""
	if _, err := exec.LookPath("etcd"); err != nil {
		why = "etcd not found on PATH (make deps installs etcd-server)"
	} else if d := os.Getenv("WSGATE_KUBE_BINDIR"); d != "" {
		binDir = d // prebuilt kube-apiserver and kube-controller-manager
	} else if d, err := buildControlPlane(); err != nil {
		why = err.Error()
	} else {
		binDir = d
	}
	if why != "" {
		if ci {
			fmt.Fprintln(os.Stderr, "test/kube: "+why+": CI requires it")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "test/kube: skipped: "+why)
	}
	os.Exit(m.Run())
}

func buildControlPlane() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "wsgate-kube")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	start := time.Now()
	ldflags, err := versionFlags()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", dir+"/", "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager")
	cmd.Dir = "tools"
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the control plane in test/kube/tools: %v\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "test/kube: control plane built in %s\n", time.Since(start).Round(time.Second))
	return dir, nil
}

// versionFlags stamps the binaries with the release test/kube/tools pins,
// as Kubernetes' own build does: without them kube-apiserver reports
// v0.0.0-master, and helm refuses the chart's kubeVersion. -X only changes
// the link, so Go's build cache still holds every compiled package.
func versionFlags() (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "k8s.io/kubernetes")
	cmd.Dir = "tools"
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("reading the pinned k8s.io/kubernetes version in test/kube/tools: %v", err)
	}
	v := strings.TrimSpace(string(out))
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return "", fmt.Errorf("k8s.io/kubernetes version %q: want vMAJOR.MINOR.PATCH", v)
	}
	const pkg = "k8s.io/component-base/version."
	return fmt.Sprintf("-X %sgitVersion=%s -X %sgitMajor=%s -X %sgitMinor=%s -X %sgitTreeState=clean",
		pkg, v, pkg, parts[0], pkg, parts[1], pkg), nil
}

// controlPlane is one etcd, kube-apiserver and kube-controller-manager.
type controlPlane struct {
	host       string // https://127.0.0.1:port
	admin      kubernetes.Interface
	kubeconfig string // the admin's, for tools such as helm
}

// run starts a process for the test's lifetime, its output in dir/name.log.
func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s log tail:\n%s", filepath.Base(name), b)
		}
	})
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	if binDir == "" {
		t.Skip("control plane not available (see TestMain's message)")
	}
	dir := t.TempDir()
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
	run(t, dir, "etcd", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(redistest.FreePort(t)))

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "sa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	writeFile(t, dir, "sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	writeFile(t, dir, "tokens.csv", []byte(adminToken+",admin,admin,system:masters\n"))

	port := redistest.FreePort(t)
	host := "https://127.0.0.1:" + strconv.Itoa(port)
	run(t, dir, filepath.Join(binDir, "kube-apiserver"),
		"--etcd-servers", etcdURL, "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(port), "--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"), "--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/24", "--endpoint-reconciler-type", "none",
		// No kubelet mounts tokens: pods need no ServiceAccount.
		"--disable-admission-plugins", "ServiceAccount")

	cp := &controlPlane{host: host}
	cp.admin = cp.client(t, adminToken)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := cp.admin.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, nil
	}); err != nil {
		t.Fatalf("kube-apiserver not ready: %v", err)
	}

	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, host, adminToken)
	writeFile(t, dir, "kubeconfig", []byte(kubeconfig))
	cp.kubeconfig = filepath.Join(dir, "kubeconfig")
	run(t, dir, filepath.Join(binDir, "kube-controller-manager"),
		"--kubeconfig", cp.kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers", "deployment,replicaset,endpointslice")
	return cp
}

func writeFile(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// client is a clientset with a bearer token. The serving certificate is the
// API server's own self-signed one, on loopback.
func (cp *controlPlane) client(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(cp.config(token))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (cp *controlPlane) config(token string) *rest.Config {
	return &rest.Config{Host: cp.host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 100, Burst: 200}
}
