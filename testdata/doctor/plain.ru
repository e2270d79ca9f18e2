# frozen_string_literal: true

# For e2e/cli_doctor_test.go: an app that knows nothing of Cablecar.
run ->(_env) { [200, { "content-type" => "text/html" }, ["<h1>hello</h1>\n"]] }
