package xds

import (
	"encoding/json"
	"net/http"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/weftmesh/weft/internal/pilot/push"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// DebugHandler serves /debug/syncz (every proxy's sync state),
// /debug/config_dump?proxyID=ID (the resources pilot set for one proxy,
// by type, as protojson) and /debug/registryz (the merged service
// registry pilot translates against: every source's services and
// endpoints, as istiod's registryz).
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/syncz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Syncz())
	})
	mux.HandleFunc("/debug/registryz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.pusher.Snapshot().Registry)
	})
	mux.HandleFunc("/debug/config_dump", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("proxyID")
		if id == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "proxyID is required, e.g. /debug/config_dump?proxyID=sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local"})
			return
		}
		res, ok := s.pusher.Resources(id)
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no proxy " + id + " is connected (see /debug/syncz)"})
			return
		}
		out := map[string][]json.RawMessage{}
		for _, typ := range push.XDSTypes {
			key := shortName(typ)
			out[key] = []json.RawMessage{}
			for _, r := range res[typ] {
				b, err := protojson.Marshal(redactKey(r.(proto.Message)))
				if err != nil {
					writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
					return
				}
				out[key] = append(out[key], b)
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// redactKey hides a gateway credential's private key (SDS), as Envoy's
// config dump does.
func redactKey(m proto.Message) proto.Message {
	sec, ok := m.(*tlsv3.Secret)
	if !ok || sec.GetTlsCertificate().GetPrivateKey() == nil {
		return m
	}
	out := proto.Clone(sec).(*tlsv3.Secret)
	out.GetTlsCertificate().PrivateKey = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "[redacted]"}}
	return out
}
