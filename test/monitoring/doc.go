// Package monitoring tests what operators run against wsgate's metrics: the
// Grafana dashboards of monitoring/dashboards (and their copy in the chart)
// and the Prometheus rules of monitoring/rules. Every PromQL expression is
// parsed by Prometheus' own parser, every metric name in it must be exported
// by the real binaries from their first scrape, and the dashboards' queries
// must return data from a real Prometheus scraping a real tracker and scaler.
//
// It is a module of its own so that Prometheus' module, which the parser
// comes with, stays out of wsgate's go.mod; `make test` runs it.
package monitoring
