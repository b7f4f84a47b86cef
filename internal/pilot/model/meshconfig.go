package model

import (
	"encoding/json"
	"fmt"
	"sort"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1 "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

// meshConfigFields are the MeshConfig fields weft uses; others are
// reported as warnings.
var meshConfigFields = map[string]bool{
	"rootNamespace": true, "trustDomain": true, "outboundTrafficPolicy": true,
	"connectTimeout": true, "enableAutoMtls": true, "pathNormalization": true,
}

// ParseMeshConfig applies an Istio MeshConfig document (YAML or JSON, as
// in the istio ConfigMap's "mesh" key) over base. It returns the result
// and a warning for every top-level field weft does not use; an unknown
// or invalid field of a used one is an error.
func ParseMeshConfig(data []byte, base Mesh) (Mesh, []string, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return base, nil, fmt.Errorf("mesh config: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return base, nil, fmt.Errorf("mesh config: %w", err)
	}
	var warnings []string
	used := map[string]json.RawMessage{}
	for k, v := range top {
		if meshConfigFields[k] {
			used[k] = v
			continue
		}
		warnings = append(warnings, fmt.Sprintf("mesh config: field %q is not used by weft; ignored", k))
	}
	sort.Strings(warnings)
	js, _ = json.Marshal(used)
	mc := &meshv1.MeshConfig{}
	if err := protojson.Unmarshal(js, mc); err != nil {
		return base, warnings, fmt.Errorf("mesh config: %w", err)
	}
	m := base
	if _, ok := used["rootNamespace"]; ok {
		m.RootNamespace = mc.GetRootNamespace()
	}
	if _, ok := used["trustDomain"]; ok {
		m.TrustDomain = mc.GetTrustDomain()
	}
	if _, ok := used["outboundTrafficPolicy"]; ok {
		m.OutboundTrafficPolicyAllowAny = mc.GetOutboundTrafficPolicy().GetMode() == meshv1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY
	}
	if _, ok := used["connectTimeout"]; ok {
		m.ConnectTimeout = mc.GetConnectTimeout().AsDuration()
	}
	if _, ok := used["enableAutoMtls"]; ok {
		m.EnableAutoMTLS = mc.GetEnableAutoMtls().GetValue()
	}
	if _, ok := used["pathNormalization"]; ok {
		switch n := mc.GetPathNormalization().GetNormalization(); n {
		case meshv1.MeshConfig_ProxyPathNormalization_DEFAULT, meshv1.MeshConfig_ProxyPathNormalization_BASE:
			m.PathNormalization = PathNormalizationBase
		case meshv1.MeshConfig_ProxyPathNormalization_NONE:
			m.PathNormalization = PathNormalizationNone
		case meshv1.MeshConfig_ProxyPathNormalization_MERGE_SLASHES:
			m.PathNormalization = PathNormalizationMergeSlashes
		case meshv1.MeshConfig_ProxyPathNormalization_DECODE_AND_MERGE_SLASHES:
			m.PathNormalization = PathNormalizationDecodeAndMergeSlashes
		default:
			return base, warnings, fmt.Errorf("mesh config: pathNormalization %s is not supported", n)
		}
	}
	return m, warnings, nil
}
