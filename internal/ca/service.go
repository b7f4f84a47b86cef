package ca

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	securitypb "istio.io/api/security/v1alpha1"
)

// Validator authenticates a bearer credential that is not a weft bootstrap
// token (a Kubernetes service-account JWT, later) and returns the identity
// it proves.
type Validator interface {
	Authenticate(ctx context.Context, bearer string) (Identity, error)
}

// ServiceOptions configure a Service.
type ServiceOptions struct {
	// JWT, if set, authenticates bearer credentials that are not bootstrap
	// tokens. Nil: only bootstrap tokens and workload certificates.
	JWT Validator
	// Registerer receives the service's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Service serves Istio's IstioCertificateService
// (/istio.v1.auth.IstioCertificateService/CreateCertificate) over gRPC.
// The caller is authenticated by, in this order:
//
//  1. "authorization: Bearer <token>" metadata: a bootstrap token (wbt_…),
//     or a credential for ServiceOptions.JWT;
//  2. otherwise its TLS client certificate: a current workload certificate
//     chaining to the trust bundle (renewal).
//
// The certificate's identity is the authenticated one; the CSR's subject
// and SANs are ignored.
type Service struct {
	securitypb.UnimplementedIstioCertificateServiceServer
	a    *Authority
	opts ServiceOptions
	log  *slog.Logger
	reqs *prometheus.CounterVec
}

// NewService returns the CSR service of a.
func NewService(a *Authority, opts ServiceOptions, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{a: a, opts: opts, log: log}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_ca_csr_total",
		Help: "Certificate signing requests by authentication method (token, certificate, jwt, none) and result (issued, unauthenticated, invalid, error).",
	}, []string{"method", "result"})
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.reqs)
	}
	return s
}

// Register adds the service to g (the TLS gRPC server on :15012).
func (s *Service) Register(g *grpc.Server) {
	securitypb.RegisterIstioCertificateServiceServer(g, s)
}

// maxCSRBytes bounds a CSR; real ones are well under 2 KiB.
const maxCSRBytes = 64 << 10

// CreateCertificate authenticates the caller and signs its CSR.
// ValidityDuration is in seconds (0: the default lifetime); metadata is
// ignored.
func (s *Service) CreateCertificate(ctx context.Context, req *securitypb.IstioCertificateRequest) (*securitypb.IstioCertificateResponse, error) {
	id, method, err := s.authenticate(ctx)
	if err != nil {
		s.reqs.WithLabelValues(method, "unauthenticated").Inc()
		s.log.Debug("CSR refused", "method", method, "peer", peerAddr(ctx), "error", err)
		return nil, err
	}
	if len(req.GetCsr()) > maxCSRBytes {
		s.reqs.WithLabelValues(method, "invalid").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "csr is %d bytes, at most %d", len(req.GetCsr()), maxCSRBytes)
	}
	if req.GetValidityDuration() < 0 {
		s.reqs.WithLabelValues(method, "invalid").Inc()
		return nil, status.Errorf(codes.InvalidArgument, "validity_duration %d is negative (seconds; 0 for the default)", req.GetValidityDuration())
	}
	ttl := time.Duration(min(req.GetValidityDuration(), int64(s.a.opts.MaxWorkloadTTL/time.Second))) * time.Second
	if strings.TrimSpace(req.GetCsr()) == "" {
		s.reqs.WithLabelValues(method, "invalid").Inc()
		return nil, status.Error(codes.InvalidArgument, "csr is empty: send a PEM CERTIFICATE REQUEST")
	}
	chain, err := s.a.Sign([]byte(req.GetCsr()), id, ttl)
	switch {
	case errors.Is(err, ErrInvalidCSR), errors.Is(err, ErrInvalidIdentity), errors.Is(err, ErrInvalidTTL):
		s.reqs.WithLabelValues(method, "invalid").Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		s.reqs.WithLabelValues(method, "error").Inc()
		s.log.Error("signing workload certificate", "identity", id.String(), "error", err)
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.reqs.WithLabelValues(method, "issued").Inc()
	s.log.Debug("issued workload certificate", "identity", id.String(), "method", method, "peer", peerAddr(ctx))
	return &securitypb.IstioCertificateResponse{CertChain: chain}, nil
}

// authenticate returns the caller's identity and how it was proven, or a
// gRPC Unauthenticated (or Unavailable/Internal for store trouble) error.
func (s *Service) authenticate(ctx context.Context) (Identity, string, error) {
	if bearer, ok, err := bearerToken(ctx); err != nil {
		return Identity{}, "none", err
	} else if ok {
		if !strings.HasPrefix(bearer, BootstrapTokenPrefix) {
			if s.opts.JWT == nil {
				return Identity{}, "jwt", status.Error(codes.Unauthenticated,
					"the bearer credential is not a weft bootstrap token (wbt_…); Kubernetes service-account tokens are not accepted by this CA yet")
			}
			id, err := s.opts.JWT.Authenticate(ctx, bearer)
			if err != nil {
				return Identity{}, "jwt", status.Errorf(codes.Unauthenticated, "bearer token: %v", err)
			}
			return id, "jwt", nil
		}
		id, _, err := s.a.authenticateBootstrap(ctx, bearer)
		switch {
		case err == nil:
			return id, "token", nil
		case errors.Is(err, ErrInvalidToken), errors.Is(err, ErrExpiredToken), errors.Is(err, ErrGroupNotFound), errors.Is(err, ErrInvalidIdentity):
			return Identity{}, "token", status.Errorf(codes.Unauthenticated, "bootstrap token: %v", err)
		default:
			s.log.Warn("authenticating bootstrap token", "error", err)
			return Identity{}, "token", status.Error(codes.Unavailable, "cannot check the bootstrap token right now; retry")
		}
	}
	p, ok := peer.FromContext(ctx)
	if ok {
		if ti, isTLS := p.AuthInfo.(credentials.TLSInfo); isTLS && len(ti.State.PeerCertificates) > 0 {
			id, err := s.a.IdentityFromCertificate(ti.State.PeerCertificates)
			if err != nil {
				return Identity{}, "certificate", status.Errorf(codes.Unauthenticated, "workload certificate: %v", err)
			}
			return id, "certificate", nil
		}
	}
	return Identity{}, "none", status.Error(codes.Unauthenticated,
		"no credentials: send a bootstrap token as \"authorization: Bearer wbt_…\" metadata, or connect over TLS with a workload certificate issued by this CA")
}

// bearerToken returns the token of the "authorization: Bearer" metadata.
func bearerToken(ctx context.Context) (string, bool, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", false, nil
	}
	if len(vals) > 1 {
		return "", false, status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) == "" {
		return "", false, status.Error(codes.Unauthenticated, "authorization metadata must read \"Bearer <token>\"")
	}
	return strings.TrimSpace(tok), true, nil
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// Authenticate proves a gRPC caller's identity the way CreateCertificate
// does (bootstrap token, else a workload certificate from this CA), for
// other services on the same port such as xDS.
func (s *Service) Authenticate(ctx context.Context) (Identity, error) {
	id, _, err := s.authenticate(ctx)
	return id, err
}
