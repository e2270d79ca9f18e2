# frozen_string_literal: true

# Puma for make bench-rails, both ways alike. Behind Cablecar, Puma gets
# one keep-alive connection per webhook in flight; by default a thread that
# has answered on one waits up to 0.2 s for that connection's next request
# (FAST_TRACK_KA_TIMEOUT) while requests on the others queue, which holds 5
# threads to about 25 webhooks/s. max_fast_inline 0 hands the connection
# back to the reactor whenever other requests wait. ActionCable inside Puma
# is unaffected: its sockets are hijacked.
max_fast_inline 0
