# frozen_string_literal: true

require "securerandom"
require "rails/generators"

module Cablecar
  module Generators
    # bin/rails generate cablecar:install
    #
    # Puts Cablecar in front of a Rails app for development: the middleware,
    # an initializer, the cable.yml adapter, the sidecar's own config, and a
    # Procfile.dev that bin/dev runs: Cablecar on :3000, Puma on
    # 127.0.0.1:3001 behind it. One secret, CABLECAR_CALLBACK_SECRET, in .env
    # (which foreman, behind bin/dev, loads for both processes). Running it
    # twice changes nothing the first run did.
    class InstallGenerator < Rails::Generators::Base
      desc "Serve WebSockets through Cablecar: middleware, initializer, cable.yml, config/cablecar.yml, Procfile.dev and bin/dev"

      APP_PORT = 3001
      MIDDLEWARE = "config.middleware.use Cablecar::Middleware"
      WEB = "web: bin/rails server -b 127.0.0.1 -p #{APP_PORT}"
      SIDECAR = "cablecar: cablecar -config config/cablecar.yml"

      def middleware
        if File.read(File.join(destination_root, "config/application.rb")).include?("Cablecar::Middleware")
          say_status :identical, "config/application.rb (Cablecar::Middleware)", :blue
          return
        end
        application "# Cablecar's callbacks, checked with CABLECAR_CALLBACK_SECRET at the first one.\n#{MIDDLEWARE}\n"
      end

      def initializer
        create_file "config/initializers/cablecar.rb", <<~RUBY
          # frozen_string_literal: true

          # Cablecar serves this app's WebSockets: it owns the sockets and calls
          # the app with signed HTTP requests, which Cablecar::Middleware
          # (config/application.rb) checks with CABLECAR_CALLBACK_SECRET, the
          # variable Cablecar reads as callback.secret. It is read when the
          # first callback arrives, so .env and test setup can set it.
          Cablecar.configure do |c|
            # Where Cablecar.publish, send_to and close go: the sidecar's admin
            # API (CABLECAR_ADMIN_URL, default http://127.0.0.1:9394) ...
            # c.admin_url = "http://127.0.0.1:9394"
            # ... or Redis, the same server as Cablecar's broker.url:
            # c.redis_url = ENV["REDIS_URL"]
          end
        RUBY
      end

      # ActionCable's broadcasts go through Cablecar (development and
      # production; the test adapter stays).
      def cable_yml
        path = File.join(destination_root, "config/cable.yml")
        unless File.exist?(path)
          create_file "config/cable.yml", <<~YAML
            development:
              adapter: cablecar

            test:
              adapter: test

            production:
              adapter: cablecar
          YAML
          return
        end
        %w[development production].each do |env|
          gsub_file "config/cable.yml", /^(#{env}:\s*\n(?:[ \t]+.*\n)*?[ \t]+adapter:[ \t]*)(?!cablecar\b)\S+/, "\\1cablecar"
        end
      end

      def sidecar_config
        create_file "config/cablecar.yml", <<~YAML
          # Cablecar in development: clients connect to :3000, the app (Puma,
          # Procfile.dev's web) listens on 127.0.0.1:#{APP_PORT}. Every key, its
          # default and meaning: sidecar.yaml and docs/configuration.md in the
          # Cablecar repository; any key can also be set as CABLECAR_<KEY>.
          # The callback secret comes from CABLECAR_CALLBACK_SECRET (.env).
          listen: ":3000"
          upstream: "http://127.0.0.1:#{APP_PORT}"
          admin:
            listen: "127.0.0.1:9394"
          log:
            level: info
        YAML
      end

      def procfile
        path = File.join(destination_root, "Procfile.dev")
        unless File.exist?(path)
          create_file "Procfile.dev", "#{WEB}\n#{SIDECAR}\n"
          return
        end
        # Rails 7's web line listens on :3000, which Cablecar takes now.
        gsub_file "Procfile.dev", /^web:.*$/, WEB
        append_to_file "Procfile.dev", "#{SIDECAR}\n" unless File.read(path).include?(SIDECAR)
      end

      def bin_dev
        return if File.exist?(File.join(destination_root, "bin/dev"))

        create_file "bin/dev", <<~SH
          #!/usr/bin/env sh
          # Runs Procfile.dev: Cablecar on :3000 in front of Puma on 127.0.0.1:#{APP_PORT}.
          if ! command -v foreman >/dev/null 2>&1; then
            echo "Installing foreman..."
            gem install foreman
          fi
          exec foreman start -f Procfile.dev "$@"
        SH
        chmod "bin/dev", 0o755
      end

      # foreman (bin/dev) loads .env for every process: one secret, read by
      # Cablecar and the gem alike.
      def secret
        env = File.join(destination_root, ".env")
        if File.exist?(env) && File.read(env).match?(/^CABLECAR_CALLBACK_SECRET=/)
          say_status :identical, ".env (CABLECAR_CALLBACK_SECRET)", :blue
        else
          line = "CABLECAR_CALLBACK_SECRET=#{SecureRandom.hex(32)}\n"
          File.exist?(env) ? append_to_file(".env", line) : create_file(".env", line)
        end
        ignore = File.join(destination_root, ".gitignore")
        return unless File.exist?(ignore)
        return if File.read(ignore).match?(%r{^/?\.env$})

        append_to_file ".gitignore", "\n# Secrets for development (CABLECAR_CALLBACK_SECRET)\n/.env\n"
      end

      def next_step
        say <<~TEXT

          Cablecar is installed. Next:
            1. Put the cablecar binary on your PATH (in the Cablecar repository: make build, then bin/cablecar).
            2. bin/dev, then open http://localhost:3000: Cablecar, in front of Puma on 127.0.0.1:#{APP_PORT}.
            3. Accept WebSockets in a controller: request.env["rack.upgrade?"] == :websocket (the gem's README, "Rails").
            4. Check the wiring: cablecar doctor -config config/cablecar.yml -path /your/socket/path
        TEXT
      end
    end
  end
end
