package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/wsgate/wsgate/fleets"
)

// setPodsKeys are setpods.lua's KEYS, in its order.
func setPodsKeys(k Keys) []string { return []string{k.Pods(), k.Avail(), k.Load(), k.Stats()} }

// SetPods replaces the pod registry of fleet (setpods.lua). Writing the
// same list twice changes nothing, so several writers may run.
func (s *Store) SetPods(ctx context.Context, fleet string, pods []fleets.Pod) error {
	// ARGV, in setpods.lua's order: n, then (address, json, ready,
	// draining) per pod.
	args := []any{len(pods)}
	for _, pod := range pods {
		if err := fleets.ValidatePodAddr(pod.Addr); err != nil {
			return fmt.Errorf("set pods %s: %w", fleet, err)
		}
		doc, err := json.Marshal(pod)
		if err != nil {
			return fmt.Errorf("set pods %s: %w", fleet, err)
		}
		args = append(args, pod.Addr, doc, boolArg(pod.Ready), boolArg(pod.Draining))
	}
	if err := scriptSetPods.Run(ctx, s.rdb, setPodsKeys(s.Keys(fleet)), args...).Err(); err != nil {
		return fmt.Errorf("set pods %s: %w", fleet, err)
	}
	return nil
}
