package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/test/redistest"
)

// checkDemoOutput asserts what a person running the demo must see: the
// new epoch's recovery wait sat out before the first client (no recovering
// refusal), the fleet filled exactly to its cap through both gateways, the surplus
// refused for capacity with a Retry-After, the release after the close,
// every metrics view, and the scaler's answer through KEDA's client.
func checkDemoOutput(t *testing.T, out string) {
	t.Helper()
	admitted := regexp.MustCompile(`(?m)^  #\d+ +gateway [ab]  101 admitted +-> pod-\d`).FindAllString(out, -1)
	if len(admitted) != 6 {
		t.Errorf("%d admitted lines, want 3 pods x cap 2 = 6", len(admitted))
	}
	for _, gw := range []string{"gateway a  101", "gateway b  101"} {
		if !strings.Contains(out, gw) {
			t.Errorf("no admission through %s", gw)
		}
	}
	rejected := regexp.MustCompile(`(?m)^  #\d+ +gateway [ab]  503 rejected +reason capacity +Retry-After: 5s$`).FindAllString(out, -1)
	if len(rejected) != 3 {
		t.Errorf("%d capacity rejections with Retry-After, want 3", len(rejected))
	}
	for _, want := range []string{
		"it grants no admission for one instance TTL (3s, by Redis' clock and",
		"=> recovery wait over after ",
		"=> 6 admitted (the fleet holds 6 = 3 pods x cap 2), 3 refused for capacity, 0 otherwise",
		"released: Redis and the pods both count 3 live connections",
		"=> a freed slot admits again",
		"CONNECTIONS  live 4, established 4",
		"recovery     over (ended ",
		"REJECTIONS",
		"fleet                  capacity    3",
		"SCALING",
		"scaler: 1 trigger(s)", "demo/backend@", "reporting  3            3",
		"DETAILED",
		"READINESS  ready",
		"connections        4.00",
		"saturation         0.67",
		"=> recommendation: ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^  desiredReplicas +\d+\.\d\d`).MatchString(out) {
		t.Error("output lacks the desiredReplicas line")
	}
	if strings.Contains(out, "Serving until Ctrl-C") {
		t.Error("script-only run printed the serving banner")
	}
	if strings.Contains(out, "could not") || strings.Contains(out, "failed") {
		t.Error("output reports a failure")
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// demoTestRedisTimeout is the trackers' Redis timeout in the demo's tests:
// they check what the script shows, not timing, and on a busy machine the
// default 100 ms refuses admissions as redis_down.
const demoTestRedisTimeout = 2 * time.Second

func TestDemoEmbeddedRedis(t *testing.T) {
	var out bytes.Buffer
	err := runDemo(&out, demoOptions{backends: 3, cap: 2, rate: 5, listenBase: "127.0.0.1:0", logLevel: "warn", redisTimeout: demoTestRedisTimeout, scriptOnly: true})
	if err != nil {
		t.Fatalf("demo: %v\noutput:\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "embedded (in-process miniredis") {
		t.Error("output does not say the Redis is embedded")
	}
	checkDemoOutput(t, out.String())
}

// TestDemoExternalRedis: on a Redis of its own, with a password and
// another deployment's {wsgate:demo} state in it, the demo runs under a
// prefix of its own, leaves the other state alone and none of its keys
// behind, and shows the views through the metrics command it prints.
func TestDemoExternalRedis(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "s3cret")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: "s3cret"})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	epochKey := store.FleetKeys("", "demo").Epoch()
	if err := rdb.Set(ctx, epochKey, "someone else's", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runDemo(&out, demoOptions{redisAddr: srv.Addr(), redisPassword: "s3cret", backends: 3, cap: 2, rate: 5, listenBase: "127.0.0.1:0", logLevel: "warn", redisTimeout: demoTestRedisTimeout, scriptOnly: true})
	if err != nil {
		t.Fatalf("demo: %v\noutput:\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), srv.Addr()+" ") || !strings.Contains(out.String(), "external (--redis)") {
		t.Errorf("output does not name the external Redis %s", srv.Addr())
	}
	hint := regexp.MustCompile(`(?m)^  \$ WSGATE_REDIS_PASSWORD=\.\.\. wsgate metrics --redis-addr \S+ --redis-prefix wsgate-demo-[0-9a-f]{8} --config \S+/fleets.yaml --settle 1s$`)
	if !hint.MatchString(out.String()) {
		t.Error("output lacks the metrics command it ran, with the run's prefix and fleets file")
	}
	if strings.Contains(out.String(), "s3cret") {
		t.Error("output shows the Redis password")
	}
	checkDemoOutput(t, out.String())
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != epochKey {
		t.Errorf("keys after the demo: %q, want only the one it found", keys)
	}
	if v, _ := rdb.Get(ctx, epochKey).Result(); v != "someone else's" {
		t.Errorf("%s = %q after the demo, want it untouched", epochKey, v)
	}
}

func TestDemoUnreachableRedis(t *testing.T) {
	var out bytes.Buffer
	err := runDemo(&out, demoOptions{redisAddr: "127.0.0.1:1", backends: 1, cap: 1, rate: 1, listenBase: "127.0.0.1:0", logLevel: "error", redisTimeout: demoTestRedisTimeout, scriptOnly: true})
	if err == nil || !strings.Contains(err.Error(), "reach Redis at 127.0.0.1:1") {
		t.Fatalf("err = %v, want one line naming the unreachable Redis", err)
	}
}

func TestDemoRejectsBadOptions(t *testing.T) {
	for _, o := range []demoOptions{
		{backends: 0, cap: 2, rate: 5, listenBase: "127.0.0.1:0", logLevel: "warn", redisTimeout: time.Second},
		{backends: 3, cap: 2, rate: 5, listenBase: "0.0.0.0:0", logLevel: "warn", redisTimeout: time.Second},
		{backends: 3, cap: 2, rate: 5, listenBase: "127.0.0.1:0", logLevel: "loud", redisTimeout: time.Second},
		{backends: 3, cap: 2, rate: 5, listenBase: "127.0.0.1:0", logLevel: "warn"},
	} {
		if err := runDemo(&bytes.Buffer{}, o); err == nil {
			t.Errorf("%+v: accepted", o)
		}
	}
}
