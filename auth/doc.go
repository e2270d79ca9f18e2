// Package auth decides whom Cablecar lets in and proves to the app that a
// callback came from Cablecar: the origin allow-list checked at the
// handshake, the HMAC signature on every accept and event request, and
// (a later issue) JWT verification. It touches no sockets; upgrade and
// callback call it.
package auth
