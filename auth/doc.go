// Package auth decides whom Cablecar lets in and proves to the app that a
// callback came from Cablecar: the origin allow-list checked at the
// handshake, the HMAC signature on every accept and event request, and the
// JWT verified at the handshake before the app is asked. It touches no
// sockets; upgrade and callback call it.
package auth
