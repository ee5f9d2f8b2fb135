/* SPDX-License-Identifier: Apache-2.0 */
/* Types shared by capture.bpf.c and ztunnel's loader (ztunnel/src/capture/ebpf/abi.rs mirrors
 * them field by field; change both together). Addresses are 16 bytes: IPv4 uses addr[0] only,
 * so one key type serves both families. */
#ifndef ZTUNNEL_CAPTURE_H
#define ZTUNNEL_CAPTURE_H

#include <linux/types.h>

#define ZT_FAMILY_V4 4
#define ZT_FAMILY_V6 6

/* IPv6 has a single loopback address, so IPv6 DNS goes to ZT_DNS6_PREFIX::i instead (fd7a:7475:
 * 6e6e:656c::/96, "ztunnel" in ASCII), which the loader makes local in each enrolled namespace
 * with a `local` route on lo (any-IP). Words in host order; the programs convert. */
#define ZT_DNS6_PREFIX0 0xfd7a7475
#define ZT_DNS6_PREFIX1 0x6e6e656c

/* settings[0]: written once by the loader before anything is enrolled. */
struct zt_settings {
	__u32 socket_mark;   /* ztunnel's own sockets: never redirected */
	__u32 delivery_mark; /* ztunnel's transparent delivery sockets: never redirected */
	__u16 outbound_port; /* pod-local outbound listener */
	__u16 hbone_port;    /* left alone by sk_lookup */
	__u16 dns_port;      /* pod-local DNS listener; 0: DNS is not captured */
	__u16 pad;
};

/* A redirected DNS socket: (netns, index) where the index is the low 24 bits of the loopback
 * address 127.i.i.i (IPv4 resolvers) or the last word of ZT_DNS6_PREFIX::i (IPv6 resolvers)
 * its datagrams were sent to, so the DNS listener can read the original resolver from the
 * destination address of each datagram. */
struct zt_dns_key {
	__u64 netns;
	__u32 index;
	__u32 pad;
};

/* An address the application asked for. */
struct zt_addr {
	__u32 addr[4]; /* network order */
	__u16 port;    /* network order */
	__u16 family;  /* ZT_FAMILY_V4 or ZT_FAMILY_V6 */
};

/* A client socket as both ends of a loopback connection see it: (netns, address, port). */
struct zt_tuple {
	__u64 netns;
	__u32 addr[4]; /* network order */
	__u32 port;    /* host order */
	__u32 family;
};

/* An address and port without namespace: sk_lookup runs in one pod's namespace and has no
 * netns cookie helper, and a node's pod addresses are unique. */
struct zt_endpoint {
	__u32 addr[4]; /* network order */
	__u32 port;    /* host order; 0 in the listener map (any port) */
	__u32 family;
};

/* A source network whose connections sk_lookup leaves alone (health probes). LPM trie key:
 * prefixlen counts bits from `family` on, so it is 32 + the network's prefix length. */
struct zt_net {
	__u32 prefixlen;
	__u32 family;
	__u32 addr[4]; /* network order */
};

/* Indices of the per-CPU counters array. */
enum zt_counter {
	ZT_REDIRECT_OUTBOUND = 0, /* connect4/6 rewrote a destination */
	ZT_REDIRECT_INBOUND,      /* sk_lookup steered a connection to the inbound listener */
	ZT_MISS_SOCKOPS,          /* a redirected connection had no recorded destination */
	ZT_MISS_GETSOCKOPT,       /* SO_ORIGINAL_DST asked in an enrolled netns, nothing recorded */
	ZT_ERROR_CONNECT,         /* recording the original destination failed */
	ZT_ERROR_SOCKOPS,         /* re-keying the original destination failed */
	ZT_ERROR_SK_LOOKUP,       /* bpf_sk_assign failed */
	ZT_ORIGINAL_DST_ANSWERED, /* getsockopt answered SO_ORIGINAL_DST */
	ZT_PEERNAME_REWRITTEN,    /* getpeername showed the app its intended peer */
	ZT_DELIVERY_BYPASSED,     /* ztunnel's own delivery passed sk_lookup untouched */
	ZT_PROBE_BYPASSED,        /* a health probe source passed sk_lookup untouched */
	ZT_REFUSED_NO_LISTENER,   /* fail-closed: a captured pod address had no listener */
	ZT_REDIRECT_DNS,          /* a UDP datagram or connect to port 53 went to the DNS listener */
	ZT_COUNTERS,
};

#endif
