package capture

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A tiny systemd for the tests: it runs a generated .service file's
// ExecStartPre=, ExecStart= and ExecStopPost= lines in a network namespace
// the way systemd would, so that the e2e tests exercise the unit that
// `weft workload entry configure` writes rather than a copy of its commands.
//
// Supported, as systemd.service(5) and systemd.exec(5) define them:
// User=, Group=, AmbientCapabilities= (for the commands run as User=),
// Environment= and EnvironmentFile= (files override
// Environment=; a "-" path prefix makes the file optional), StateDirectory=
// and StateDirectoryMode= (created under /var/lib, owned by User=, removed
// again if the runner created it), command prefixes "-" (failure ignored)
// and "+" (run with full privileges, not as User=), quoting with '…' and
// "…", "${VAR}" (one argument) and "$VAR" as a word (split at whitespace),
// and the specifiers %H (host name) and %%. Every other Exec*= directive,
// prefix or specifier fails the test rather than being skipped.

// unitFile is a parsed .service file.
type unitFile struct {
	path          string
	user, group   string
	env           []string // Environment= assignments, in order
	envFiles      []string // EnvironmentFile= paths, in order
	stateDirs     []string
	stateMode     os.FileMode
	ambient       []string // AmbientCapabilities=, lower case, without CAP_
	pre, stopPost []string // raw command lines
	start         string
}

// parseUnit reads the [Service] section of a unit file.
func parseUnit(path string) (*unitFile, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	u := &unitFile{path: path, stateMode: 0o755}
	section := ""
	for i, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		if section != "[Service]" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: %q is not key=value", path, i+1, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "User":
			u.user = v
		case "Group":
			u.group = v
		case "Environment":
			words, err := splitWords(v)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
			}
			u.env = append(u.env, words...)
		case "EnvironmentFile":
			u.envFiles = append(u.envFiles, v)
		case "AmbientCapabilities":
			for _, c := range strings.Fields(v) {
				if !strings.HasPrefix(c, "CAP_") {
					return nil, fmt.Errorf("%s:%d: AmbientCapabilities=%s: the test's unit runner takes CAP_* names only", path, i+1, v)
				}
				u.ambient = append(u.ambient, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		case "StateDirectory":
			u.stateDirs = append(u.stateDirs, strings.Fields(v)...)
		case "StateDirectoryMode":
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: StateDirectoryMode=%s: %w", path, i+1, v, err)
			}
			u.stateMode = os.FileMode(m)
		case "ExecStartPre":
			u.pre = append(u.pre, v)
		case "ExecStart":
			if u.start != "" {
				return nil, fmt.Errorf("%s:%d: a second ExecStart= (Type=simple allows one)", path, i+1)
			}
			u.start = v
		case "ExecStopPost":
			u.stopPost = append(u.stopPost, v)
		default:
			if strings.HasPrefix(k, "Exec") {
				return nil, fmt.Errorf("%s:%d: the test's unit runner does not support %s=", path, i+1, k)
			}
		}
	}
	if u.start == "" {
		return nil, fmt.Errorf("%s: no ExecStart=", path)
	}
	return u, nil
}

// splitWords splits a systemd value at unquoted whitespace, honouring '…',
// "…" and backslash escapes.
func splitWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote == 0 && (r == '\'' || r == '"'):
			quote, inWord = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inWord = true
		case quote == 0 && (r == ' ' || r == '\t'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// readEnvFile reads an EnvironmentFile=: KEY=VALUE lines, '#' and ';'
// comments, optional quotes around the value.
func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("%s:%d: %q is not KEY=VALUE", path, n, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		out = append(out, strings.TrimSpace(k)+"="+v)
	}
	return out, sc.Err()
}

// command is one Exec*= line, expanded.
type command struct {
	args       []string
	ignoreFail bool // "-"
	privileged bool // "+"
}

// expand applies a command line's prefixes, specifiers and variables.
func expand(line, host string, env map[string]string) (command, error) {
	var c command
prefixes:
	for len(line) > 0 {
		switch line[0] {
		case '-':
			c.ignoreFail = true
		case '+':
			c.privileged = true
		case '@', '!', ':', '|':
			return c, fmt.Errorf("%q: prefix %q is not supported by the test's unit runner", line, line[0])
		default:
			break prefixes
		}
		line = line[1:]
	}
	var spec strings.Builder
	for i := 0; i < len(line); i++ {
		if line[i] != '%' {
			spec.WriteByte(line[i])
			continue
		}
		if i+1 >= len(line) {
			return c, fmt.Errorf("%q: trailing %%", line)
		}
		i++
		switch line[i] {
		case 'H':
			spec.WriteString(host)
		case '%':
			spec.WriteByte('%')
		default:
			return c, fmt.Errorf("%q: specifier %%%c is not supported by the test's unit runner", line, line[i])
		}
	}
	words, err := splitWords(spec.String())
	if err != nil {
		return c, err
	}
	for _, w := range words {
		if strings.HasPrefix(w, "$") && !strings.HasPrefix(w, "${") {
			c.args = append(c.args, strings.Fields(env[w[1:]])...)
			continue
		}
		var b strings.Builder
		for {
			i := strings.Index(w, "${")
			if i < 0 {
				b.WriteString(w)
				break
			}
			j := strings.IndexByte(w[i:], '}')
			if j < 0 {
				return c, fmt.Errorf("%q: unterminated ${", line)
			}
			b.WriteString(w[:i])
			b.WriteString(env[w[i+2:i+j]])
			w = w[i+j+1:]
		}
		c.args = append(c.args, b.String())
	}
	if len(c.args) == 0 || !filepath.IsAbs(c.args[0]) {
		return c, fmt.Errorf("%q: the command must be an absolute path", line)
	}
	return c, nil
}

// service is a unit started in a network namespace.
type service struct {
	t      *testing.T
	u      *unitFile
	ns     string
	host   string
	env    []string
	envMap map[string]string
	main   *exec.Cmd
	done   chan error
	log    *os.File
	made   []string // state directories the runner created
}

// startUnit runs the unit's ExecStartPre= lines (a failure runs
// ExecStopPost= and fails the test, as systemd does), then starts ExecStart=
// in the background. host is what %H expands to.
func startUnit(t *testing.T, path, ns, host string) *service {
	t.Helper()
	u, err := parseUnit(path)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{t: t, u: u, ns: ns, host: host, envMap: map[string]string{}}
	set := func(kv string) {
		k, v, _ := strings.Cut(kv, "=")
		s.envMap[k] = v
	}
	set("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	for _, kv := range u.env {
		set(strings.ReplaceAll(kv, "%H", host))
	}
	for _, f := range u.envFiles {
		optional := strings.HasPrefix(f, "-")
		kvs, err := readEnvFile(strings.TrimPrefix(f, "-"))
		if err != nil && !(optional && os.IsNotExist(err)) {
			t.Fatalf("%s: EnvironmentFile=%s: %v", path, f, err)
		}
		for _, kv := range kvs {
			set(kv)
		}
	}
	var states []string
	for _, d := range u.stateDirs {
		dir := filepath.Join("/var/lib", d)
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			s.made = append(s.made, dir)
		}
		if err := os.MkdirAll(dir, u.stateMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, u.stateMode); err != nil {
			t.Fatal(err)
		}
		if uid, gid, ok := numericIDs(u.user, u.group); ok {
			if err := os.Chown(dir, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		states = append(states, dir)
	}
	if len(states) > 0 {
		s.envMap["STATE_DIRECTORY"] = strings.Join(states, ":")
	}
	for k, v := range s.envMap {
		s.env = append(s.env, k+"="+v)
	}
	t.Cleanup(func() {
		for _, d := range s.made {
			_ = os.RemoveAll(d)
		}
	})
	for _, line := range u.pre {
		if out, err := s.run(line); err != nil {
			s.stopPost()
			t.Fatalf("%s: ExecStartPre=%s: %v\n%s", path, line, err, out)
		}
	}
	c, err := expand(u.start, host, s.envMap)
	if err != nil {
		t.Fatal(err)
	}
	s.log, err = os.Create(filepath.Join(t.TempDir(), filepath.Base(path)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	s.main = s.cmd(c)
	s.main.Stdout, s.main.Stderr = s.log, s.log
	if err := s.main.Start(); err != nil {
		s.stopPost()
		t.Fatalf("%s: ExecStart=: %v", path, err)
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.main.Wait() }()
	t.Cleanup(func() {
		if s.main != nil {
			s.stop()
		}
		if t.Failed() {
			b, _ := os.ReadFile(s.log.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s on %s log:\n%s", filepath.Base(path), host, b)
		}
		s.log.Close()
	})
	return s
}

// numericIDs parses User= and Group= when they are numbers (the tests run
// without the unit's named system user).
func numericIDs(user, group string) (int, int, bool) {
	uid, err1 := strconv.Atoi(user)
	gid, err2 := strconv.Atoi(group)
	return uid, gid, err1 == nil && err2 == nil
}

// cmd builds the process for c: in the namespace, as User=/Group= unless
// privileged, with the unit's environment.
func (s *service) cmd(c command) *exec.Cmd {
	args := []string{"netns", "exec", s.ns}
	if !c.privileged && s.u.user != "" {
		group := s.u.group
		if group == "" {
			group = s.u.user
		}
		args = append(args, "setpriv", "--reuid="+s.u.user, "--regid="+group, "--clear-groups")
		if len(s.u.ambient) > 0 {
			caps := "+" + strings.Join(s.u.ambient, ",+")
			args = append(args, "--inh-caps="+caps, "--ambient-caps="+caps)
		}
		args = append(args, "--")
	}
	cmd := exec.Command("ip", append(args, c.args...)...)
	cmd.Env = s.env
	return cmd
}

// run runs one ExecStartPre=/ExecStopPost= line to completion; a failure
// of a "-" line is not an error.
func (s *service) run(line string) (string, error) {
	c, err := expand(line, s.host, s.envMap)
	if err != nil {
		return "", err
	}
	out, err := s.cmd(c).CombinedOutput()
	if c.ignoreFail {
		err = nil
	}
	return string(out), err
}

// stopPost runs the ExecStopPost= lines, failing the test on a failure.
func (s *service) stopPost() {
	s.t.Helper()
	for _, line := range s.u.stopPost {
		if out, err := s.run(line); err != nil {
			s.t.Errorf("%s: ExecStopPost=%s: %v\n%s", s.u.path, line, err, out)
		}
	}
}

// stop sends SIGTERM to the ExecStart= process, waits for it (SIGKILL after
// 30s, the unit's TimeoutStopSec=), then runs ExecStopPost=.
func (s *service) stop() {
	s.t.Helper()
	if s.main == nil {
		return
	}
	_ = s.main.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.t.Errorf("%s: ExecStart= did not exit 30s after SIGTERM; killed", s.u.path)
		_ = s.main.Process.Kill()
		<-s.done
	}
	s.main = nil
	s.stopPost()
}

// TestUnitRunnerExpansion pins the runner's systemd semantics (no root
// needed): prefixes, %H, ${VAR} as one argument, $VAR split into words,
// quoting, EnvironmentFile= overriding Environment=, and refusals.
func TestUnitRunnerExpansion(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "env")
	if err := os.WriteFile(envFile, []byte("# comment\nA=from file\nB=\"x y\"\n; other comment\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "u.service")
	if err := os.WriteFile(unit, []byte(`[Unit]
ExecStart=/not/in/service
[Service]
User=1337
Environment=A=from-unit "C=%H z"
EnvironmentFile=`+envFile+`
EnvironmentFile=-`+filepath.Join(dir, "missing")+`
ExecStartPre=+/bin/pre --b=${B} $B
ExecStart=/bin/main 'one arg' %% --c=${C}
ExecStopPost=-+/bin/post
`), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(unit)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range u.env {
		k, v, _ := strings.Cut(strings.ReplaceAll(kv, "%H", "vm-a"), "=")
		env[k] = v
	}
	kvs, err := readEnvFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["A"] != "from file" || env["C"] != "vm-a z" {
		t.Errorf("environment %v: EnvironmentFile= must override Environment=, and %%H expand", env)
	}
	pre, err := expand(u.pre[0], "vm-a", env)
	if err != nil || !pre.privileged || pre.ignoreFail || fmt.Sprint(pre.args) != "[/bin/pre --b=x y x y]" || len(pre.args) != 4 {
		t.Errorf("ExecStartPre: %+v %v", pre, err)
	}
	main, err := expand(u.start, "vm-a", env)
	if err != nil || len(main.args) != 4 || main.args[1] != "one arg" || main.args[2] != "%" || main.args[3] != "--c=vm-a z" {
		t.Errorf("ExecStart: %q %v", main.args, err)
	}
	post, err := expand(u.stopPost[0], "vm-a", env)
	if err != nil || !post.privileged || !post.ignoreFail {
		t.Errorf("ExecStopPost: %+v %v", post, err)
	}
	for _, bad := range []string{"@/bin/x", "/bin/x %n", "relative", "/bin/x 'open"} {
		if _, err := expand(bad, "vm-a", env); err == nil {
			t.Errorf("expand(%q) succeeded, want a refusal", bad)
		}
	}
	if err := os.WriteFile(unit, []byte("[Service]\nExecStart=/bin/x\nExecReload=/bin/y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := parseUnit(unit); err == nil || !strings.Contains(err.Error(), "ExecReload") {
		t.Errorf("parseUnit with ExecReload=: %v, want a refusal naming it", err)
	}
}
