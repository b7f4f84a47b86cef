package route

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// knownFields lists, per message, the fields Compile understands or
// ignores on purpose (the package doc says which and why). Any other field
// that is set makes Compile fail, so a field added to the xDS API later,
// or one weft does not implement, is NACKed rather than silently dropped.
var knownFields = map[protoreflect.FullName]map[protoreflect.Name]bool{}

// known records the fields of one message.
func known(msg protoreflect.FullName, names ...protoreflect.Name) {
	m := map[protoreflect.Name]bool{}
	for _, n := range names {
		m[n] = true
	}
	knownFields[msg] = m
}

func init() {
	const r, c, m = "envoy.config.route.v3.", "envoy.config.core.v3.", "envoy.type.matcher.v3."
	known(r+"RouteConfiguration", "name", "virtual_hosts", "internal_only_headers",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"most_specific_header_mutations_wins", "validate_clusters", "max_direct_response_body_size_bytes",
		"ignore_port_in_host_matching", "typed_per_filter_config", "metadata")
	known(r+"VirtualHost", "name", "domains", "routes", "virtual_clusters",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
		"typed_per_filter_config", "include_request_attempt_count", "include_attempt_count_in_response",
		"retry_policy", "per_request_buffer_limit_bytes", "request_body_buffer_limit", "request_mirror_policies", "metadata",
		"require_tls")
	known(r+"Route", "name", "match", "route", "redirect", "direct_response", "metadata", "decorator",
		"typed_per_filter_config", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "tracing", "per_request_buffer_limit_bytes",
		"request_body_buffer_limit", "stat_prefix")
	known(r+"RouteMatch", "prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters", "grpc")
	known(r+"RouteAction", "cluster", "weighted_clusters", "cluster_not_found_response_code", "prefix_rewrite",
		"regex_rewrite", "host_rewrite_literal", "timeout", "retry_policy", "request_mirror_policies", "priority",
		"include_vh_rate_limits", "hash_policy", "max_stream_duration")
	known(r+"RouteAction.MaxStreamDuration", "max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
	known(r+"RouteAction.RequestMirrorPolicy", "cluster", "runtime_fraction", "trace_sampled", "disable_shadow_host_suffix_append")
	known(r+"RouteAction.HashPolicy", "header", "cookie", "connection_properties", "query_parameter", "terminal")
	known(r+"RouteAction.HashPolicy.Header", "header_name")
	known(r+"RouteAction.HashPolicy.Cookie", "name", "ttl", "path", "attributes")
	known(r+"WeightedCluster", "clusters", "total_weight", "runtime_key_prefix")
	known(r+"WeightedCluster.ClusterWeight", "name", "weight", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove", "host_rewrite_literal")
	known(r+"RetryPolicy", "retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout", "retry_priority",
		"retry_host_predicate", "host_selection_retry_max_attempts", "retriable_status_codes", "retry_back_off")
	known(r+"RetryPolicy.RetryBackOff", "base_interval", "max_interval")
	known(r+"RedirectAction", "https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect",
		"prefix_rewrite", "regex_rewrite", "response_code", "strip_query")
	known(r+"DirectResponseAction", "status", "body")
	known(r+"HeaderMatcher", "name", "string_match", "present_match", "range_match", "exact_match", "safe_regex_match",
		"prefix_match", "suffix_match", "contains_match", "invert_match", "treat_missing_header_as_empty")
	known(r+"QueryParameterMatcher", "name", "string_match", "present_match")
	known(r+"FilterConfig", "config", "is_optional", "disabled")
	known(c+"HeaderValueOption", "header", "append", "append_action", "keep_empty_value")
	known(c+"HeaderValue", "key", "value", "raw_value")
	known(c+"DataSource", "inline_bytes", "inline_string")
	known(c+"RuntimeFractionalPercent", "default_value", "runtime_key")
	known(m+"StringMatcher", "exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case")
	known(m+"RegexMatcher", "regex", "google_re2")
	known(m+"RegexMatchAndSubstitute", "pattern", "substitution")
	known("envoy.extensions.filters.http.fault.v3.HTTPFault", "delay", "abort", "delay_percent_runtime",
		"abort_percent_runtime", "delay_duration_runtime", "abort_http_status_runtime", "max_active_faults_runtime",
		"response_rate_limit_percent_runtime", "abort_grpc_status_runtime", "disable_downstream_cluster_stats")
	known("envoy.extensions.filters.http.fault.v3.FaultAbort", "http_status", "grpc_status", "percentage", "response_body")
	known("envoy.extensions.filters.common.fault.v3.FaultDelay", "fixed_delay", "percentage")
	known("envoy.extensions.filters.http.cors.v3.CorsPolicy", "allow_origin_string_match", "allow_methods",
		"allow_headers", "expose_headers", "max_age", "allow_credentials", "filter_enabled", "shadow_enabled",
		"allow_private_network_access", "forward_not_matching_preflights")
}

// checkFields fails when m has a field set that knownFields does not list;
// where names the message in the error.
func checkFields(m proto.Message, where string) error {
	rm := m.ProtoReflect()
	allowed, ok := knownFields[rm.Descriptor().FullName()]
	if !ok {
		return fmt.Errorf("%s: %s: %w", where, rm.Descriptor().FullName(), ErrUnsupported)
	}
	var bad protoreflect.Name
	rm.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !allowed[fd.Name()] {
			bad = fd.Name()
			return false
		}
		return true
	})
	if bad != "" {
		return fmt.Errorf("%s: field %s: %w", where, bad, ErrUnsupported)
	}
	return nil
}
