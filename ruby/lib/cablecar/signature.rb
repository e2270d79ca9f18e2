# frozen_string_literal: true

require "openssl"

module Cablecar
  # The Cablecar-Signature header (SPEC §6):
  #
  #   t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<payload>">[,v1=…]
  #
  # The payload is the body of an event POST, and for the accept GET
  # (accept_payload):
  #
  #   GET <path and query>\n<Cablecar-Connection-Id>\n<Cablecar-Claims or empty>
  #
  # so that the connection id and the claims the app trusts are Cablecar's
  # word: an accept replayed at the app with other claims, or one that
  # carries a claims header Cablecar did not set, does not verify.
  #
  # Cablecar adds one v1 entry per secret it holds, and the app may hold
  # several too: any entry matching any secret passes, so a secret is
  # rotated by giving both sides the new one first, then dropping the old
  # one.
  module Signature
    HEADER = "Cablecar-Signature"
    DEFAULT_TOLERANCE = 300 # seconds either side of now

    class Invalid < StandardError; end

    module_function

    # Secrets from a String (comma-separated, as in CABLECAR_CALLBACK_SECRET)
    # or an Array; blanks dropped.
    def secrets(value)
      list = value.is_a?(Array) ? value : value.to_s.split(",")
      list.map { |s| s.to_s.strip }.reject(&:empty?)
    end

    # The accept GET's payload, from the request target and the two
    # headers as the app received them (nil is empty). Bytes, whatever the
    # server's string encodings.
    def accept_payload(target, connection_id, claims)
      String.new("GET ", encoding: Encoding::BINARY) << target.to_s.b << "\n" << connection_id.to_s.b << "\n" << claims.to_s.b
    end

    def sign(secrets, payload, now: Time.now)
      t = now.to_i.to_s
      parts = ["t=#{t}"]
      Keyring.for(secrets).hexdigests(t, payload).each { |mac| parts << "v1=#{mac}" }
      parts.join(",")
    end

    # The secrets, each with its HMAC key schedule computed once: starting
    # from a copy of it costs a quarter of setting up HMAC from the secret
    # (OpenSSL 3 looks the digest up every time), which is most of what a
    # check costs.
    class Keyring
      def self.for(secrets)
        secrets.is_a?(Keyring) ? secrets : new(secrets)
      end

      def initialize(secrets)
        @bases = Signature.secrets(secrets).map { |s| OpenSSL::HMAC.new(s, "SHA256") }
      end

      def empty?
        @bases.empty?
      end

      def hexdigests(t, payload)
        @bases.map do |base|
          h = base.dup
          h << t << "." << payload
          h.hexdigest
        end
      end
    end

    # Raises Invalid, saying why, unless header signs payload with one of
    # secrets (a list, or a Keyring) within tolerance seconds of now.
    def verify!(header, payload, secrets, tolerance: DEFAULT_TOLERANCE, now: Time.now)
      raise Invalid, "no #{HEADER} header" if header.nil? || header.empty?

      t = nil
      sigs = []
      header.split(",").each do |part|
        key, value = part.strip.split("=", 2)
        case key
        when "t" then t = value
        when "v1" then sigs << value if value&.match?(/\A\h{64}\z/)
        end
      end
      raise Invalid, "malformed #{HEADER} header" unless t&.match?(/\A\d{1,12}\z/) && !sigs.empty?
      raise Invalid, "stale #{HEADER}: its time is more than #{tolerance} s from ours" if (now.to_i - t.to_i).abs > tolerance

      Keyring.for(secrets).hexdigests(t, payload).each do |want|
        # Every entry is compared, whether or not one already matched, and
        # each comparison takes the same time whatever the bytes.
        matched = sigs.map { |got| secure_compare(want, got.downcase) }
        return true if matched.any?
      end
      raise Invalid, "#{HEADER} does not match any secret"
    end

    def secure_compare(a, b)
      return false unless a.bytesize == b.bytesize

      OpenSSL.fixed_length_secure_compare(a, b)
    end
  end
end
