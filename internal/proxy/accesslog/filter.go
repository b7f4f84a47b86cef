package accesslog

import (
	"fmt"
	"strconv"
	"strings"
)

// Filter decides whether an entry is logged: the subset of CEL that
// Istio's Telemetry accessLogging filters commonly use. Expressions
// compare response.code with integers (==, !=, <, <=, >, >=) and combine
// comparisons with &&, ||, ! and parentheses, e.g.
// "response.code >= 400" or "response.code >= 500 || response.code == 429".
// A TCP connection has no response code: its comparisons are false (as
// in Envoy, where the attribute is absent). A nil Filter logs everything.
type Filter struct {
	expr string
	root node
}

// FilterSyntax describes what ParseFilter accepts.
const FilterSyntax = "response.code compared (==, !=, <, <=, >, >=) with an integer, combined with &&, ||, ! and parentheses"

// String is the expression.
func (f *Filter) String() string { return f.expr }

// Match reports whether e passes the filter.
func (f *Filter) Match(e *Entry) bool {
	if f == nil {
		return true
	}
	return f.root.eval(e)
}

// ParseFilter compiles a CEL expression of the supported subset; any
// other expression is an error naming what is supported.
func ParseFilter(expr string) (*Filter, error) {
	p := &celParser{src: expr}
	p.next()
	n, err := p.or()
	if err == nil && p.tok != "" {
		err = fmt.Errorf("unexpected %q", p.tok)
	}
	if err != nil {
		return nil, fmt.Errorf("access log filter %q: %w; weft supports %s", expr, err, FilterSyntax)
	}
	return &Filter{expr: expr, root: n}, nil
}

type node interface{ eval(*Entry) bool }

type andNode struct{ a, b node }
type orNode struct{ a, b node }
type notNode struct{ a node }
type cmpNode struct {
	op string
	n  int64
}

func (n andNode) eval(e *Entry) bool { return n.a.eval(e) && n.b.eval(e) }
func (n orNode) eval(e *Entry) bool  { return n.a.eval(e) || n.b.eval(e) }
func (n notNode) eval(e *Entry) bool { return !n.a.eval(e) }

func (n cmpNode) eval(e *Entry) bool {
	if e.Code == 0 {
		return false // no response code (TCP, or no response)
	}
	c := int64(e.Code)
	switch n.op {
	case "==":
		return c == n.n
	case "!=":
		return c != n.n
	case "<":
		return c < n.n
	case "<=":
		return c <= n.n
	case ">":
		return c > n.n
	case ">=":
		return c >= n.n
	}
	return false
}

// celParser is a recursive-descent parser over a tiny tokenizer.
type celParser struct {
	src string
	pos int
	tok string
}

func (p *celParser) next() {
	s := p.src
	for p.pos < len(s) && (s[p.pos] == ' ' || s[p.pos] == '\t' || s[p.pos] == '\n') {
		p.pos++
	}
	if p.pos >= len(s) {
		p.tok = ""
		return
	}
	start := p.pos
	for _, op := range []string{"&&", "||", "==", "!=", "<=", ">="} {
		if strings.HasPrefix(s[p.pos:], op) {
			p.pos += 2
			p.tok = op
			return
		}
	}
	c := s[p.pos]
	if strings.IndexByte("()<>!", c) >= 0 {
		p.pos++
		p.tok = s[start:p.pos]
		return
	}
	for p.pos < len(s) && (isIdent(s[p.pos]) || s[p.pos] == '.') {
		p.pos++
	}
	if p.pos == start {
		p.pos++ // an unknown character: its own token, rejected by the parser
	}
	p.tok = s[start:p.pos]
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func (p *celParser) or() (node, error) {
	a, err := p.and()
	for err == nil && p.tok == "||" {
		p.next()
		var b node
		if b, err = p.and(); err == nil {
			a = orNode{a, b}
		}
	}
	return a, err
}

func (p *celParser) and() (node, error) {
	a, err := p.unary()
	for err == nil && p.tok == "&&" {
		p.next()
		var b node
		if b, err = p.unary(); err == nil {
			a = andNode{a, b}
		}
	}
	return a, err
}

func (p *celParser) unary() (node, error) {
	switch p.tok {
	case "!":
		p.next()
		a, err := p.unary()
		return notNode{a}, err
	case "(":
		p.next()
		a, err := p.or()
		if err != nil {
			return nil, err
		}
		if p.tok != ")" {
			return nil, fmt.Errorf("missing ')'")
		}
		p.next()
		return a, nil
	}
	return p.comparison()
}

// comparison is "response.code OP INT" or "INT OP response.code".
func (p *celParser) comparison() (node, error) {
	left := p.tok
	p.next()
	op := p.tok
	switch op {
	case "==", "!=", "<", "<=", ">", ">=":
	default:
		if left == "" {
			return nil, fmt.Errorf("unexpected end of expression")
		}
		return nil, fmt.Errorf("%q is not a comparison", left)
	}
	p.next()
	right := p.tok
	p.next()
	if n, err := strconv.ParseInt(right, 10, 64); err == nil && left == "response.code" {
		return cmpNode{op: op, n: n}, nil
	}
	if n, err := strconv.ParseInt(left, 10, 64); err == nil && right == "response.code" {
		flip := map[string]string{"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
		return cmpNode{op: flip[op], n: n}, nil
	}
	return nil, fmt.Errorf("%s %s %s: only response.code compared with an integer is supported", left, op, right)
}
