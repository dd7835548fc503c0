package store

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// This file holds the helpers that encode script arguments and decode the
// parts of script replies several scripts share.

// newEpoch is the random part of a new epoch's id; sync.lua puts Redis'
// clock before it, so the id tells when the epoch began by that clock.
func newEpoch() string { return randomHex(4) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

func epochStart(epoch string) time.Time {
	var ms int64
	if _, err := fmt.Sscanf(epoch, "%d-", &ms); err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func boolArg(b bool) int {
	if b {
		return 1
	}
	return 0
}

func i64(v any) int64 {
	n, _ := v.(int64)
	return n
}

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, e := range l {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func pairs(v any) map[string]string {
	l := strs(v)
	out := make(map[string]string, len(l)/2)
	for i := 0; i+1 < len(l); i += 2 {
		out[l[i]] = l[i+1]
	}
	return out
}

func counts(v any) map[string]int {
	out := map[string]int{}
	for k, s := range pairs(v) {
		n, err := strconv.ParseFloat(s, 64)
		if err == nil && n > 0 {
			out[k] = int(n)
		}
	}
	return out
}

// windows decodes a flat (reason, 5m, 15m, 1h, ...) list.
func windows(v any) map[Reason]Windows {
	l, _ := v.([]any)
	out := map[Reason]Windows{}
	for i := 0; i+3 < len(l); i += 4 {
		r, _ := l[i].(string)
		out[Reason(r)] = Windows{M5: i64(l[i+1]), M15: i64(l[i+2]), H1: i64(l[i+3])}
	}
	return out
}
