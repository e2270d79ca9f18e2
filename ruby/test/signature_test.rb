# frozen_string_literal: true

require_relative "test_helper"

class SignatureTest < Minitest::Test
  S = Cablecar::Signature

  # SPEC §6's format, computed independently; that Cablecar itself agrees
  # is proved end to end (e2e/ruby_gem_test.go).
  def test_matches_an_independent_hmac
    header = S.sign("k1", "body", now: Time.at(1_700_000_000))
    want = OpenSSL::HMAC.hexdigest("SHA256", "k1", "1700000000.body")
    assert_equal "t=1700000000,v1=#{want}", header
  end

  def test_verifies_its_own_signature
    header = S.sign("k1", "payload")
    assert S.verify!(header, "payload", ["k1"])
  end

  def test_rotation_any_secret_against_any_entry
    header = S.sign(%w[old new], "p") # Cablecar mid-rotation: two v1 entries
    assert S.verify!(header, "p", ["new"])
    assert S.verify!(header, "p", ["old"])
    assert S.verify!(S.sign("new", "p"), "p", "old,new") # the app mid-rotation
  end

  def test_refusals_say_why
    {
      nil => /no Cablecar-Signature/,
      "" => /no Cablecar-Signature/,
      "v1=abc" => /malformed/,
      "t=now,v1=#{'0' * 64}" => /malformed/,
      "t=1700000000" => /malformed/,
      S.sign("other", "p") => /does not match/,
      S.sign("k1", "tampered") => /does not match/
    }.each do |header, why|
      err = assert_raises(S::Invalid, header.inspect) { S.verify!(header, "p", ["k1"]) }
      assert_match why, err.message
    end
  end

  def test_stale_and_future_timestamps
    old = S.sign("k1", "p", now: Time.now - 301)
    assert_raises(S::Invalid) { S.verify!(old, "p", ["k1"]) }
    future = S.sign("k1", "p", now: Time.now + 301)
    assert_raises(S::Invalid) { S.verify!(future, "p", ["k1"]) }
    assert S.verify!(old, "p", ["k1"], tolerance: 400)
  end

  def test_secrets_parsing
    assert_equal %w[a b], S.secrets(" a , b ,")
    assert_equal %w[a], S.secrets(["a", "", nil])
    assert_equal [], S.secrets(nil)
  end
end
