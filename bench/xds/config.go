package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// The mesh config: for each service i, a ServiceEntry svc-<i> for host
// svc-<i>.bench.mesh (one HTTP port 8080, STATIC, endpoints 10.1.<i>.1-3:
// two labelled version v1, one v2), a DestinationRule with subsets v1 and v2
// and a VirtualService splitting traffic between them by weight.

const (
	namespace   = "default"
	servicePort = 8080
	// apiPrefix is the networking.istio.io collection prefix in namespace.
	apiPrefix = "/apis/networking.istio.io/v1/namespaces/" + namespace + "/"
	// requestTimeout bounds one API request.
	requestTimeout = 30 * time.Second
)

func serviceName(i int) string { return fmt.Sprintf("svc-%02d", i) }
func serviceHost(i int) string { return serviceName(i) + ".bench.mesh" }

// endpointIP is the address of endpoint j (0-2) of service i. Client node
// IPs are in 10.200.0.0/16 (see nodeID), so no client is an endpoint.
func endpointIP(i, j int) string { return fmt.Sprintf("10.1.%d.%d", i, j+1) }

func serviceEntry(i int) map[string]any {
	eps := []any{}
	for j := 0; j < 3; j++ {
		version := "v1"
		if j == 2 {
			version = "v2"
		}
		eps = append(eps, map[string]any{"address": endpointIP(i, j), "ports": map[string]any{"http": servicePort},
			"labels": map[string]any{"version": version}})
	}
	return object("ServiceEntry", serviceName(i), map[string]any{
		"hosts":      []any{serviceHost(i)},
		"location":   "MESH_INTERNAL",
		"resolution": "STATIC",
		"ports":      []any{map[string]any{"number": servicePort, "name": "http", "protocol": "HTTP"}},
		"endpoints":  eps,
	})
}

func destinationRule(i int) map[string]any {
	return object("DestinationRule", serviceName(i), map[string]any{
		"host": serviceHost(i),
		"subsets": []any{
			map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}},
			map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}},
		},
	})
}

// virtualService routes w1 % of svc-<i> to subset v1 and the rest to v2.
func virtualService(i, w1 int) map[string]any {
	dest := func(subset string, w int) map[string]any {
		return map[string]any{"destination": map[string]any{"host": serviceHost(i), "subset": subset,
			"port": map[string]any{"number": servicePort}}, "weight": w}
	}
	return object("VirtualService", serviceName(i), map[string]any{
		"hosts": []any{serviceHost(i)},
		"http": []any{map[string]any{
			"name":  "split",
			"route": []any{dest("v1", w1), dest("v2", 100-w1)},
		}},
	})
}

func object(kind, name string, spec map[string]any) map[string]any {
	return map[string]any{
		"apiVersion": "networking.istio.io/v1",
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": namespace, "labels": map[string]any{"app": "xds-bench"}},
		"spec":       spec,
	}
}

func resourceOf(kind string) string {
	switch kind {
	case "ServiceEntry":
		return "serviceentries"
	case "DestinationRule":
		return "destinationrules"
	}
	return "virtualservices"
}

// api is an HTTPS client of one weft server, authenticated with a bearer
// token, on one HTTP/2 connection.
type api struct {
	base   string
	token  string
	client *http.Client
	tr     *http.Transport
}

func newAPI(base, token string, tc *tls.Config) *api {
	tr := &http.Transport{TLSClientConfig: tc.Clone(), ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	return &api{base: base, token: token, tr: tr, client: &http.Client{Transport: tr}}
}

func (a *api) close() { a.tr.CloseIdleConnections() }

// do sends obj (if not nil) and returns the response's resourceVersion.
func (a *api) do(ctx context.Context, method, path string, obj any, want int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var body io.Reader
	if obj != nil {
		b, err := json.Marshal(obj)
		if err != nil {
			return "", err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Accept", "application/json")
	if obj != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return "", fmt.Errorf("%s %s: reading response: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return "", fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	var o struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return "", fmt.Errorf("%s %s: decoding response: %w", method, path, err)
	}
	return o.Metadata.ResourceVersion, nil
}

// mesh is the applied config and what the bench needs to change it.
type mesh struct {
	services int
	// vsVersion is each VirtualService's resourceVersion (for PUT), w1 its
	// current weight of subset v1.
	vsVersion []string
	w1        []int
}

// initialWeight is every VirtualService's initial v1 weight; a change
// flips it to 100-initialWeight and back.
const initialWeight = 90

// applyMesh creates the whole config, services first.
func applyMesh(ctx context.Context, a *api, services int) (*mesh, error) {
	m := &mesh{services: services, vsVersion: make([]string, services), w1: make([]int, services)}
	for _, mk := range []func(int) map[string]any{serviceEntry, destinationRule} {
		for i := 0; i < services; i++ {
			obj := mk(i)
			if _, err := a.do(ctx, http.MethodPost, apiPrefix+resourceOf(obj["kind"].(string)), obj, http.StatusCreated); err != nil {
				return nil, err
			}
		}
	}
	for i := 0; i < services; i++ {
		rv, err := a.do(ctx, http.MethodPost, apiPrefix+"virtualservices", virtualService(i, initialWeight), http.StatusCreated)
		if err != nil {
			return nil, err
		}
		m.vsVersion[i], m.w1[i] = rv, initialWeight
	}
	return m, nil
}

// flip replaces VirtualService i with its weights swapped (one PUT) and
// returns the new v1 weight.
func (m *mesh) flip(ctx context.Context, a *api, i int) (int, error) {
	w1 := 100 - m.w1[i]
	obj := virtualService(i, w1)
	obj["metadata"].(map[string]any)["resourceVersion"] = m.vsVersion[i]
	rv, err := a.do(ctx, http.MethodPut, apiPrefix+"virtualservices/"+serviceName(i), obj, http.StatusOK)
	if err != nil {
		return 0, err
	}
	m.vsVersion[i], m.w1[i] = rv, w1
	return w1, nil
}
