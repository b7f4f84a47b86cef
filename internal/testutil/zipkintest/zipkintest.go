// Package zipkintest is a Zipkin collector for tests: it keeps every
// span POSTed to it as Zipkin v2 JSON, with the Host of each request.
// Its span model is written from Zipkin's API, not from weft's sender, so
// a wrong field name in the sender shows up as a missing value.
package zipkintest

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Endpoint is a span's localEndpoint.
type Endpoint struct {
	ServiceName string `json:"serviceName"`
	IPv4        string `json:"ipv4"`
	IPv6        string `json:"ipv6"`
}

// Span is a Zipkin v2 span.
type Span struct {
	TraceID       string            `json:"traceId"`
	ID            string            `json:"id"`
	ParentID      string            `json:"parentId"`
	Name          string            `json:"name"`
	Kind          string            `json:"kind"`
	Timestamp     int64             `json:"timestamp"`
	Duration      int64             `json:"duration"`
	Shared        bool              `json:"shared"`
	LocalEndpoint Endpoint          `json:"localEndpoint"`
	Tags          map[string]string `json:"tags"`
}

// Collector serves Zipkin's span API (POST /api/v2/spans, JSON) and
// answers 400 to anything else.
type Collector struct {
	mu    sync.Mutex
	spans []Span
	hosts []string
}

func (c *Collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v2/spans" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "want POST /api/v2/spans with JSON", http.StatusBadRequest)
		return
	}
	var spans []Span
	if err := json.NewDecoder(r.Body).Decode(&spans); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.spans = append(c.spans, spans...)
	c.hosts = append(c.hosts, r.Host)
	c.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// Spans are the spans received so far, in order.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Hosts are the Host headers of the requests received so far.
func (c *Collector) Hosts() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.hosts...)
}

// Wait returns the spans once there are at least n, or what there is
// after timeout (senders flush on their own clock).
func (c *Collector) Wait(n int, timeout time.Duration) []Span {
	deadline := time.Now().Add(timeout)
	for {
		got := c.Spans()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}
