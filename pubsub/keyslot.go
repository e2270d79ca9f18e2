package pubsub

import "strings"

// keySlot is the Redis Cluster hash slot of a key or sharded channel:
// CRC16 (XMODEM) of its hash tag — the part between the first "{" and the
// next "}", when that is not empty — or of the whole name, modulo 16384
// (the Redis Cluster specification, "Keys distribution model"). The
// sharded subscriber groups a batch by it, one SSUBSCRIBE per slot.
func keySlot(key string) uint16 {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 16383
}
