// Package store owns wsgate's state in Redis: the key schema (keys.go), the
// Lua scripts that change it atomically (scripts/), and the Store that runs
// them. Every other package reads or writes that state through a Store
// method; none spells a key.
//
// A fleet's keys share one hash tag, "{<prefix>:<fleet>}:", so every script
// runs on one node, also on Redis Cluster. tracker/PROTOCOL.md argues why
// the scripts keep the per-pod cap under every fault it lists; its glossary
// maps each key to the Go names and the model's variables.
package store
