package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/resource"
)

// client talks to a weft API server with the credentials of a kubeconfig.
type client struct {
	base      string
	token     string
	namespace string
	http      *http.Client
	// warnings receives the server's Warning headers (deprecations).
	warnings io.Writer
}

// kubeconfigPath resolves --kubeconfig, then $WEFTCONFIG, then
// ~/.weft/kubeconfig.
func kubeconfigPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("WEFTCONFIG"); env != "" {
		return env
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".weft", "kubeconfig")
	}
	return filepath.Join(home, ".weft", "kubeconfig")
}

func newClient(g *globalFlags) (*client, error) {
	kc, err := kubeconfig.Load(kubeconfigPath(g.kubeconfig))
	if err != nil {
		return nil, err
	}
	res, err := kc.Resolve(g.context)
	if err != nil {
		return nil, err
	}
	ns := res.Namespace
	if g.namespace != "" {
		ns = g.namespace
	}
	return &client{
		base:      strings.TrimSuffix(res.Server, "/"),
		token:     res.Token,
		namespace: ns,
		warnings:  g.stderr,
		http: &http.Client{
			Timeout:   g.timeout,
			Transport: &http.Transport{TLSClientConfig: res.TLS, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second},
		},
	}, nil
}

// statusError is a Kubernetes Status returned by the server.
type statusError struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *statusError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("server returned %d %s", e.Code, e.Reason)
}

// do sends a request and decodes a JSON reply into out (if non-nil).
func (c *client) do(ctx context.Context, method, path string, query url.Values, contentType string, body []byte, accept string, out any) (http.Header, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept == "" {
		accept = "application/json"
	}
	req.Header.Set("Accept", accept)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the weft API server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if c.warnings != nil {
		for _, wv := range resp.Header.Values("Warning") {
			fmt.Fprintln(c.warnings, "Warning:", warningText(wv))
		}
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.Header, fmt.Errorf("reading reply from %s: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		se := &statusError{Code: resp.StatusCode}
		if json.Unmarshal(raw, se) != nil || se.Message == "" {
			se.Message = fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(raw)))
		}
		se.Code = resp.StatusCode
		return resp.Header, se
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.Header, fmt.Errorf("decoding reply to %s %s: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// collectionPath is the URL of kind's collection in ns ("" = all namespaces).
func collectionPath(k *resource.Kind, version, ns string) string {
	p := "/api/" + version
	if k.Group != "" {
		p = "/apis/" + k.Group + "/" + version
	}
	if k.Namespaced && ns != "" {
		p += "/namespaces/" + url.PathEscape(ns)
	}
	return p + "/" + k.Resource
}

func objectPath(k *resource.Kind, version, ns, name string) string {
	return collectionPath(k, version, ns) + "/" + url.PathEscape(name)
}

// warningText extracts the text of an RFC 7234 warning ("299 - \"text\"").
func warningText(h string) string {
	if i := strings.Index(h, `"`); i >= 0 && strings.HasSuffix(h, `"`) && len(h) > i+1 {
		return h[i+1 : len(h)-1]
	}
	return h
}
