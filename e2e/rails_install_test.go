package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRailsInstallGenerator runs `bin/rails generate cablecar:install` on a
// fresh Rails 6.1 app (Debian's, from `rails new`), then starts what its
// Procfile.dev says, as bin/dev would (foreman: each line under sh, .env
// loaded), and makes a real WebSocket round trip through Cablecar to a
// controller; `cablecar doctor` then finds the wiring sound.
//
// Two things differ from a developer's machine, for a test without network
// or fixed ports: the Gemfile is cut to rails, puma and this gem by path
// (`bundle lock --local` resolves it from the installed packages), and the
// Procfile's ports 3000/3001/9394 are swapped for free ones (Cablecar's
// through CABLECAR_* variables, Puma's in its command line).
func TestRailsInstallGenerator(t *testing.T) {
	t.Parallel()
	requireRails(t)
	rails := requireTool(t, "rails")
	root := RepoRoot(t)
	dir := filepath.Join(t.TempDir(), "shop")
	run := func(timeout time.Duration, env []string, name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		if name == rails && args[0] == "new" {
			cmd.Dir = filepath.Dir(dir)
		}
		cmd.Env = append(cleanEnv(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	run(2*time.Minute, nil, rails, "new", dir, "--skip-bundle", "--skip-git", "--skip-javascript", "--skip-webpack-install",
		"--skip-active-record", "--skip-sprockets", "--skip-spring", "--skip-listen", "--skip-bootsnap", "--skip-test",
		"--skip-system-test", "--skip-active-storage", "--skip-action-mailbox", "--skip-action-text", "--skip-jbuilder",
		"--skip-turbolinks")
	installWrite(t, filepath.Join(dir, "Gemfile"), "source 'https://rubygems.org'\ngem 'rails', '~> 6.1.0'\ngem 'puma'\n"+
		"gem 'cablecar', path: "+strconv.Quote(filepath.Join(root, "ruby"))+"\n")
	installWrite(t, filepath.Join(dir, ".gitignore"), "/log/*\n/tmp/*\n")
	run(2*time.Minute, nil, "bundle", "lock", "--local")

	out := run(2*time.Minute, nil, filepath.Join(dir, "bin", "rails"), "generate", "cablecar:install")
	for _, want := range []string{"Cablecar is installed. Next:", "bin/dev", "cablecar doctor -config config/cablecar.yml"} {
		if !strings.Contains(out, want) {
			t.Errorf("the generator did not print %q:\n%s", want, out)
		}
	}
	for file, want := range map[string]string{
		"config/application.rb":           "\n    config.middleware.use Cablecar::Middleware\n",
		"config/initializers/cablecar.rb": "Cablecar.configure",
		"config/cable.yml":                "development:\n  adapter: cablecar\n",
		"Procfile.dev":                    "web: bin/rails server -b 127.0.0.1 -p 3001\ncablecar: cablecar -config config/cablecar.yml\n",
		"config/cablecar.yml":             `upstream: "http://127.0.0.1:3001"`,
		".env":                            "CABLECAR_CALLBACK_SECRET=",
		".gitignore":                      "/.env\n",
		"bin/dev":                         "foreman start -f Procfile.dev",
	} {
		if b, err := os.ReadFile(filepath.Join(dir, file)); err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s does not hold %q (%v):\n%s", file, want, err, b)
		}
	}
	if again := run(2*time.Minute, nil, filepath.Join(dir, "bin", "rails"), "generate", "cablecar:install"); strings.Count(
		installRead(t, filepath.Join(dir, "config/application.rb")), "Cablecar::Middleware") != 1 ||
		strings.Count(installRead(t, filepath.Join(dir, "Procfile.dev")), "cablecar:") != 1 {
		t.Errorf("a second run added things again:\n%s", again)
	}

	// The app's own WebSocket, in the raw handler API the README shows.
	installWrite(t, filepath.Join(dir, "config", "routes.rb"),
		"Rails.application.routes.draw do\n  get \"/socket\", to: \"sockets#show\"\nend\n")
	installWrite(t, filepath.Join(dir, "app", "controllers", "sockets_controller.rb"), `class SocketsController < ApplicationController
  class Echo
    def on_open(client) = client.write("hello from rails")
    def on_message(client, data) = client.write("echo: #{data}")
  end

  def show
    return head(:upgrade_required) unless request.env["rack.upgrade?"] == :websocket

    request.env["rack.upgrade"] = Echo.new
    head :ok
  end
end
`)

	// bin/dev: foreman loads .env and runs each Procfile.dev line with sh.
	appPort, listen, admin := FreePort(t), FreePort(t), FreePort(t)
	env := append(installDotenv(t, filepath.Join(dir, ".env")),
		"PATH="+filepath.Dir(CablecarBinary(t))+string(os.PathListSeparator)+os.Getenv("PATH"),
		"CABLECAR_LISTEN=127.0.0.1:"+strconv.Itoa(listen),
		"CABLECAR_UPSTREAM=http://127.0.0.1:"+strconv.Itoa(appPort),
		"CABLECAR_ADMIN_LISTEN=127.0.0.1:"+strconv.Itoa(admin))
	for name, line := range installProcfile(t, filepath.Join(dir, "Procfile.dev")) {
		line = strings.Replace(line, "-p 3001", "-p "+strconv.Itoa(appPort), 1)
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = dir
		cmd.Env = append(cleanEnv(), env...)
		o := &Output{}
		cmd.Stdout, cmd.Stderr = o, o
		dumpOnFailure(t, "Procfile.dev "+name, o)
		p := startProcess(t, name, cmd)
		t.Cleanup(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	}
	url := "http://127.0.0.1:" + strconv.Itoa(listen)
	WaitFor(t, 90*time.Second, "Rails to answer through Cablecar", func() bool {
		code, _, err := get(newClient(t), url+"/socket", time.Second)
		return err == nil && code == 426
	})

	ws, _ := MustDialWS(t, url+"/socket", nil)
	ws.ExpectText(gemWait, "hello from rails")
	ws.Send("hi")
	ws.ExpectText(gemWait, "echo: hi")

	code, doc, _ := RunCablecar(t, env, "doctor", "-config", filepath.Join(dir, "config", "cablecar.yml"), "-path", "/socket")
	if code != 0 || !strings.Contains(doc, "the app verifies signatures and the secret matches") ||
		!strings.Contains(doc, "the app accepts a WebSocket on /socket") {
		t.Errorf("doctor on the generated app: exit %d\n%s", code, doc)
	}
}

func installWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func installRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// installDotenv reads KEY=value lines as foreman does.
func installDotenv(t *testing.T, path string) []string {
	t.Helper()
	var env []string
	for line := range strings.Lines(installRead(t, path)) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && strings.Contains(line, "=") {
			env = append(env, line)
		}
	}
	return env
}

// installProcfile reads "name: command" lines.
func installProcfile(t *testing.T, path string) map[string]string {
	t.Helper()
	procs := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(installRead(t, path)))
	for sc.Scan() {
		if name, cmd, ok := strings.Cut(sc.Text(), ":"); ok && !strings.HasPrefix(name, "#") {
			procs[strings.TrimSpace(name)] = strings.TrimSpace(cmd)
		}
	}
	if len(procs) != 2 {
		t.Fatalf("Procfile.dev has %d processes, want web and cablecar: %v", len(procs), procs)
	}
	return procs
}
