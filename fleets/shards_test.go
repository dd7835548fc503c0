package fleets

import (
	"errors"
	"fmt"
	"testing"
)

func TestGroupNamesRoundTrip(t *testing.T) {
	c := Fleet{Name: "chat", Shards: 3}
	got := c.GroupNames()
	want := []string{"chat", "chat#1", "chat#2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("GroupNames = %v, want %v", got, want)
	}
	for k, name := range got {
		f, g, ok := SplitGroup(name)
		if !ok || f != "chat" || g != k {
			t.Errorf("SplitGroup(%q) = %q, %d, %v; want chat, %d, true", name, f, g, ok, k)
		}
		if k > 0 && ValidName(name) {
			t.Errorf("%q is a valid fleet name: a fleet could collide with a group", name)
		}
	}
	for _, bad := range []string{"chat#0", "chat#01", "chat#x", "chat#-1", "chat#"} {
		if _, _, ok := SplitGroup(bad); ok {
			t.Errorf("SplitGroup(%q) ok, want not a group name", bad)
		}
	}
}

func TestGroupOfSpreadsAndIsStable(t *testing.T) {
	const n, pods = 3, 3000
	counts := make([]int, n)
	for i := range pods {
		pod := fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250)
		g := GroupOf(pod, n)
		if g != GroupOf(pod, n) {
			t.Fatalf("GroupOf(%q) not stable", pod)
		}
		counts[g]++
	}
	for g, c := range counts {
		// FNV-1a mod 3 over these addresses: each group within 10% of a third.
		if c < pods/n*9/10 || c > pods/n*11/10 {
			t.Errorf("group %d got %d of %d pods: %v", g, c, pods, counts)
		}
	}
	if GroupOf("10.0.0.1:8080", 1) != 0 || GroupOf("10.0.0.1:8080", 0) != 0 {
		t.Error("an unsharded fleet has one group, 0")
	}
}

func TestShardsValidated(t *testing.T) {
	c := Fleet{Name: "chat"}.WithDefaults()
	if c.Shards != 1 {
		t.Fatalf("default shards %d, want 1", c.Shards)
	}
	for _, n := range []int{-1, MaxShards + 1} {
		c.Shards = n
		var fe *FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Field != "shards" {
			t.Errorf("shards %d: %v, want a shards FieldError", n, err)
		}
	}
	c.Shards = 3
	if err := c.Validate(); err != nil {
		t.Errorf("shards 3: %v", err)
	}
}
