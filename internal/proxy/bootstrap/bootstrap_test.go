package bootstrap

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrecedenceAndNode(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(f, []byte("ip: 10.0.0.9\nname: from-file\nnamespace: bookinfo\nlabels: {app: ratings}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	c.Name = "from-flag" // a flag beats the file
	env := map[string]string{"WEFT_NAME": "ignored", "WEFT_SERVICE_ACCOUNT": "ratings-sa", "WEFT_INTERCEPTION_MODE": "NONE", "WEFT_WORKLOAD_NAME": "from-env"}
	if err := c.FromEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Name != "from-flag" || c.ServiceAccount != "ratings-sa" || !c.Explicit || c.Labels["app"] != "ratings" {
		t.Fatalf("config = %+v", c)
	}
	if got := c.NodeID(); got != "sidecar~10.0.0.9~from-flag.bookinfo~bookinfo.svc.cluster.local" {
		t.Fatalf("NodeID = %s", got)
	}
	n, err := c.Node()
	if err != nil {
		t.Fatal(err)
	}
	md := n.GetMetadata().GetFields()
	if md["NAMESPACE"].GetStringValue() != "bookinfo" || md["INTERCEPTION_MODE"].GetStringValue() != "NONE" ||
		md["LABELS"].GetStructValue().GetFields()["app"].GetStringValue() != "ratings" {
		t.Fatalf("metadata = %v", md)
	}
}

func TestValidateErrors(t *testing.T) {
	c := Config{Type: "gateway", IP: "not-an-ip"}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a bad config")
	}
	for _, want := range []string{`type "gateway"`, `ip "not-an-ip"`, "workload name is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := ParseLabels("a=b,broken"); err == nil {
		t.Error("ParseLabels accepted a label without =")
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "nope.yaml")); err == nil {
		t.Error("LoadFile of a missing file succeeded")
	}
}

// TestInterceptionModes: TPROXY and inbound ports reach the node metadata
// (INTERCEPTION_MODE, INBOUND_PORTS); contradictions are refused.
func TestInterceptionModes(t *testing.T) {
	c := Config{IP: "10.0.0.9", Name: "vm"}
	if err := c.FromEnv(func(k string) string { return map[string]string{"WEFT_INTERCEPTION_MODE": "TPROXY"}[k] }); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := c.Node()
	if err != nil {
		t.Fatal(err)
	}
	if got := n.GetMetadata().GetFields()["INTERCEPTION_MODE"].GetStringValue(); got != "TPROXY" || c.Explicit {
		t.Errorf("INTERCEPTION_MODE %q explicit %v, want TPROXY and capture", got, c.Explicit)
	}
	e := Config{IP: "10.0.0.9", Name: "vm", Explicit: true, InboundPorts: "9080=15080 "}
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	n, _ = e.Node()
	if md := n.GetMetadata().GetFields(); md["INBOUND_PORTS"].GetStringValue() != "9080=15080" || md["INTERCEPTION_MODE"].GetStringValue() != "NONE" {
		t.Errorf("explicit metadata %v", md)
	}
	for _, bad := range []struct {
		c    Config
		want string
	}{
		{Config{IP: "10.0.0.9", Name: "vm", InboundCaptureMode: "tproxy", Explicit: true}, "explicit mode captures nothing"},
		{Config{IP: "10.0.0.9", Name: "vm", InboundCaptureMode: "MASQUERADE"}, "use REDIRECT or TPROXY"},
		{Config{IP: "10.0.0.9", Name: "vm", InboundPorts: "9080=15080"}, "needs explicit mode"},
		{Config{IP: "10.0.0.9", Name: "vm", Explicit: true, InboundPorts: "9080"}, "--inbound-ports"},
	} {
		if err := bad.c.Validate(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: %v, want an error containing %q", bad.c, err, bad.want)
		}
	}
}

// TestRouter: a router (gateway) needs no explicit mode, gets a router~
// node id, and refuses the capture settings a gateway has no use for,
// whether from flags or from the environment.
func TestRouter(t *testing.T) {
	c := Config{Type: "router", IP: "10.0.0.9", Name: "ingress", Namespace: "istio-system"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.NodeID(); got != "router~10.0.0.9~ingress.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("NodeID = %s", got)
	}
	for _, bad := range []struct {
		env  map[string]string
		c    Config
		want string
	}{
		{nil, Config{InboundPorts: "9080=15080"}, "--inbound-ports: a router (gateway) has no inbound side"},
		{nil, Config{InboundPorts: "9080=15080", Explicit: true}, "--inbound-ports: a router (gateway) has no inbound side"},
		{nil, Config{InboundCaptureMode: "tproxy"}, "inbound capture mode TPROXY: a router (gateway) captures no traffic"},
		{map[string]string{"WEFT_INTERCEPTION_MODE": "REDIRECT"}, Config{}, "captures no traffic; unset --inbound-capture-mode and WEFT_INTERCEPTION_MODE"},
		{map[string]string{"WEFT_INBOUND_PORTS": "80=8080"}, Config{}, "unset --inbound-ports and WEFT_INBOUND_PORTS"},
	} {
		c := bad.c
		c.Type, c.IP, c.Name = "router", "10.0.0.9", "ingress"
		if err := c.FromEnv(func(k string) string { return bad.env[k] }); err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v %v: %v, want an error containing %q", bad.c, bad.env, err, bad.want)
		}
	}
	// Explicit mode (WEFT_INTERCEPTION_MODE=NONE) is not needed, but harmless.
	e := Config{Type: "router", IP: "10.0.0.9", Name: "ingress"}
	if err := e.FromEnv(func(k string) string { return map[string]string{"WEFT_INTERCEPTION_MODE": "NONE"}[k] }); err != nil {
		t.Fatal(err)
	}
	if err := e.Validate(); err != nil {
		t.Errorf("router with WEFT_INTERCEPTION_MODE=NONE: %v", err)
	}
}
