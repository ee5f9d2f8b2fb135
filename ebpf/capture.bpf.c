// SPDX-License-Identifier: Apache-2.0
/* Traffic capture for ztunnel: brings enrolled pods' TCP connections to ztunnel's listeners in
 * the pod's own network namespace.
 *
 * Outbound (attached once at the cgroup v2 root, acting only in enrolled namespaces):
 *   cgroup/connect4, connect6  rewrite the destination to the pod-local outbound listener and
 *                              remember the original by socket cookie;
 *   sockops                    at TCP_CONNECT_CB (local port known, no SYN sent yet) re-keys that
 *                              record by (netns, client address, client port), the one thing the
 *                              proxy's accepted socket also knows;
 *   cgroup/getsockopt          answers SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST from it, so the
 *                              proxy reads the original destination as with nftables;
 *   cgroup/getpeername4, 6     show the application the peer it asked for.
 * DNS (with dns_port set): connect4/6 and sendmsg4/6 send UDP to port 53 to the pod's DNS
 *   listener at 127.i.i.i or ZT_DNS6_PREFIX::i (index i kept in dns_orig), and recvmsg4/6 and
 *   getpeername4/6 show the application the resolver.
 * Inbound (one link per enrolled namespace):
 *   sk_lookup                  hands TCP connections to any port of the pod's addresses (except
 *                              HBONE) to the inbound plaintext listener; the accepted socket's
 *                              local address is the original destination.
 *
 * Several ztunnel processes may each load their own copy: every program acts only on what its
 * own maps hold, so a namespace another process enrolled is a plain miss here. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "capture.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 /* IP6T_SO_ORIGINAL_DST has the same number */

char _license[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct zt_settings);
} settings SEC(".maps");

/* netns cookie -> 1: the namespaces this process captures. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} enrolled SEC(".maps");

/* socket cookie -> original destination (client side; also answers getpeername). LRU: entries
 * are never deleted on close, because the proxy may ask after the client already closed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct zt_addr);
} cookie_orig SEC(".maps");

/* (netns, client address, client port) -> original destination (proxy side). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zt_tuple);
	__type(value, struct zt_addr);
} tuple_orig SEC(".maps");

/* DNS redirects: (netns, loopback index) -> the resolver the app asked for. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zt_dns_key);
	__type(value, struct zt_addr);
} dns_orig SEC(".maps");

/* pod address (port 0) -> that pod's inbound plaintext listener. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct zt_endpoint);
	__type(value, __u32); /* aya's SockHash wants 4 bytes */
} inbound_listeners SEC(".maps");

/* Enrolled pods' addresses (port 0), kept while the listener above comes and goes: with the
 * maps pinned (fail-closed), connections to a pod whose ztunnel is gone are refused here
 * instead of reaching the app around the mesh. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct zt_endpoint);
	__type(value, __u32);
} captured_addrs SEC(".maps");

/* Source address and port of ztunnel's own connections to apps, filled just before connect:
 * sk_lookup cannot see socket marks, and without this the delivery would loop back to 15006. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct zt_endpoint);
	__type(value, __u32);
} delivery_bypass SEC(".maps");

/* Source networks of health probes (healthProbes.sources): not captured inbound. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct zt_net);
	__type(value, __u32);
} probe_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ZT_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline struct zt_settings *get_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline int is_enrolled(__u64 netns)
{
	return bpf_map_lookup_elem(&enrolled, &netns) != NULL;
}

static __always_inline int is_ztunnel_socket(struct bpf_sock *sk, struct zt_settings *s)
{
	if (!sk)
		return 0;
	__u32 mark = sk->mark;
	return mark == s->socket_mark || mark == s->delivery_mark;
}

/* 127.0.0.0/8 and 0.0.0.0 (which also means "this host"). */
static __always_inline int v4_is_local(__u32 ip_be)
{
	__u32 ip = bpf_ntohl(ip_be);
	return (ip >> 24) == 127 || ip == 0;
}

static __always_inline int v6_is_mapped(__u32 a0, __u32 a1, __u32 a2)
{
	return a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff);
}

static __always_inline int remember(struct bpf_sock_addr *ctx, struct zt_addr *orig)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&cookie_orig, &cookie, orig, BPF_ANY)) {
		count(ZT_ERROR_CONNECT);
		return -1;
	}
	return 0;
}

/* 2 .. 0xffffff: never 127.0.0.0 or 127.0.0.1 (and never ::0 or ::1 in the IPv6 prefix) */
static __always_inline __u32 dns_index(__u64 cookie)
{
	return (__u32)(cookie % 0xfffffe) + 2;
}

/* Records the resolver a redirected DNS socket asked for under (netns, index) for the DNS
 * listener and by cookie for recvmsg/getpeername. */
static __always_inline int remember_dns(struct bpf_sock_addr *ctx, __u64 netns, __u32 index,
					struct zt_addr *orig)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct zt_dns_key key = { .netns = netns, .index = index };
	if (bpf_map_update_elem(&dns_orig, &key, orig, BPF_ANY) ||
	    bpf_map_update_elem(&cookie_orig, &cookie, orig, BPF_ANY)) {
		count(ZT_ERROR_CONNECT);
		return -1;
	}
	return 0;
}

/* The DNS settings when this UDP datagram/connect to port 53 is to be captured. */
static __always_inline struct zt_settings *dns_capture(struct bpf_sock_addr *ctx, __u64 netns)
{
	if (ctx->user_port != bpf_htons(53) || !is_enrolled(netns))
		return NULL;
	struct zt_settings *s = get_settings();
	if (!s || !s->dns_port || is_ztunnel_socket(ctx->sk, s))
		return NULL;
	return s;
}

/* UDP to port 53 (IPv4 resolvers): the destination becomes 127.i.i.i:dns_port, where i is
 * taken from the socket cookie. */
static __always_inline int redirect_dns4(struct bpf_sock_addr *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct zt_settings *s = dns_capture(ctx, netns);
	if (!s || v4_is_local(ctx->user_ip4))
		return 1;
	struct zt_addr orig = {
		.addr = { ctx->user_ip4 },
		.port = (__u16)ctx->user_port,
		.family = ZT_FAMILY_V4,
	};
	__u32 index = dns_index(bpf_get_socket_cookie(ctx));
	if (remember_dns(ctx, netns, index, &orig))
		return 1;
	ctx->user_ip4 = bpf_htonl(0x7f000000 | index);
	ctx->user_port = bpf_htons(s->dns_port);
	count(ZT_REDIRECT_DNS);
	return 1;
}

static __always_inline int in_dns6_prefix(__u32 a0, __u32 a1, __u32 a2)
{
	return a0 == bpf_htonl(ZT_DNS6_PREFIX0) && a1 == bpf_htonl(ZT_DNS6_PREFIX1) && a2 == 0;
}

/* UDP to port 53 from an IPv6 socket. IPv6 resolvers: the destination becomes
 * [ZT_DNS6_PREFIX::i]:dns_port (the DNS listener's IPv6 socket receives it through the
 * prefix's local route). A v4-mapped resolver (dual-stack socket) goes to ::ffff:127.i.i.i, the
 * IPv4 scheme: a socket that can send to a mapped address can also send to that one. */
static __always_inline int redirect_dns6(struct bpf_sock_addr *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct zt_settings *s = dns_capture(ctx, netns);
	if (!s)
		return 1;
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	struct zt_addr orig = { .port = (__u16)ctx->user_port };
	int mapped = v6_is_mapped(a0, a1, a2);
	if (mapped) {
		if (v4_is_local(a3))
			return 1;
		orig.addr[0] = a3;
		orig.family = ZT_FAMILY_V4;
	} else {
		if (a0 == 0 && a1 == 0 && a2 == 0 && (a3 == 0 || a3 == bpf_htonl(1)))
			return 1; /* :: and ::1 */
		if (in_dns6_prefix(a0, a1, a2))
			return 1; /* already redirected (or the listener itself) */
		orig.addr[0] = a0;
		orig.addr[1] = a1;
		orig.addr[2] = a2;
		orig.addr[3] = a3;
		orig.family = ZT_FAMILY_V6;
	}
	__u32 index = dns_index(bpf_get_socket_cookie(ctx));
	if (remember_dns(ctx, netns, index, &orig))
		return 1;
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000000 | index);
	} else {
		ctx->user_ip6[0] = bpf_htonl(ZT_DNS6_PREFIX0);
		ctx->user_ip6[1] = bpf_htonl(ZT_DNS6_PREFIX1);
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(index);
	}
	ctx->user_port = bpf_htons(s->dns_port);
	count(ZT_REDIRECT_DNS);
	return 1;
}

SEC("cgroup/sendmsg4")
int zt_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return 1;
	return redirect_dns4(ctx);
}

SEC("cgroup/sendmsg6")
int zt_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return 1;
	return redirect_dns6(ctx);
}

/* The DNS reply's source, when it is the DNS listener: the resolver this socket asked for. */
static __always_inline struct zt_addr *dns_reply_source(struct bpf_sock_addr *ctx)
{
	struct zt_settings *s = get_settings();
	if (!s || !s->dns_port || ctx->user_port != bpf_htons(s->dns_port))
		return NULL;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	return bpf_map_lookup_elem(&cookie_orig, &cookie);
}

/* The reply from 127.i.i.i:dns_port shows as coming from the resolver. */
SEC("cgroup/recvmsg4")
int zt_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM || (bpf_ntohl(ctx->user_ip4) >> 24) != 127)
		return 1;
	struct zt_addr *orig = dns_reply_source(ctx);
	if (!orig || orig->family != ZT_FAMILY_V4)
		return 1;
	ctx->user_ip4 = orig->addr[0];
	ctx->user_port = orig->port;
	return 1;
}

/* The reply from [ZT_DNS6_PREFIX::i]:dns_port or [::ffff:127.i.i.i]:dns_port shows as coming
 * from the resolver. */
SEC("cgroup/recvmsg6")
int zt_recvmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return 1;
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	int mapped = v6_is_mapped(a0, a1, a2) && (bpf_ntohl(a3) >> 24) == 127;
	if (!mapped && !in_dns6_prefix(a0, a1, a2))
		return 1;
	struct zt_addr *orig = dns_reply_source(ctx);
	if (!orig || orig->family != (mapped ? ZT_FAMILY_V4 : ZT_FAMILY_V6))
		return 1;
	if (mapped) {
		ctx->user_ip6[3] = orig->addr[0];
	} else {
		ctx->user_ip6[0] = orig->addr[0];
		ctx->user_ip6[1] = orig->addr[1];
		ctx->user_ip6[2] = orig->addr[2];
		ctx->user_ip6[3] = orig->addr[3];
	}
	ctx->user_port = orig->port;
	return 1;
}

SEC("cgroup/connect4")
int zt_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM)
		return redirect_dns4(ctx);
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	if (!is_enrolled(bpf_get_netns_cookie(ctx)))
		return 1;
	struct zt_settings *s = get_settings();
	if (!s || v4_is_local(ctx->user_ip4) || is_ztunnel_socket(ctx->sk, s))
		return 1;
	struct zt_addr orig = {
		.addr = { ctx->user_ip4 },
		.port = (__u16)ctx->user_port,
		.family = ZT_FAMILY_V4,
	};
	if (remember(ctx, &orig))
		return 1;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(s->outbound_port);
	count(ZT_REDIRECT_OUTBOUND);
	return 1;
}

SEC("cgroup/connect6")
int zt_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type == SOCK_DGRAM)
		return redirect_dns6(ctx);
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	if (!is_enrolled(bpf_get_netns_cookie(ctx)))
		return 1;
	struct zt_settings *s = get_settings();
	if (!s || is_ztunnel_socket(ctx->sk, s))
		return 1;
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	struct zt_addr orig = { .port = (__u16)ctx->user_port };
	int mapped = v6_is_mapped(a0, a1, a2);
	if (mapped) {
		/* An IPv4 connection through a dual-stack socket: recorded as IPv4, which is what
		 * the proxy's accepted socket sees. */
		if (v4_is_local(a3))
			return 1;
		orig.addr[0] = a3;
		orig.family = ZT_FAMILY_V4;
	} else {
		if (a0 == 0 && a1 == 0 && a2 == 0 && (a3 == 0 || a3 == bpf_htonl(1)))
			return 1; /* :: and ::1 */
		orig.addr[0] = a0;
		orig.addr[1] = a1;
		orig.addr[2] = a2;
		orig.addr[3] = a3;
		orig.family = ZT_FAMILY_V6;
	}
	if (remember(ctx, &orig))
		return 1;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(s->outbound_port);
	count(ZT_REDIRECT_OUTBOUND);
	return 1;
}

SEC("sockops")
int zt_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	if (!is_enrolled(netns))
		return 1;
	struct zt_settings *s = get_settings();
	/* remote_port holds the network-order port in its upper 16 bits */
	if (!s || bpf_ntohl(skops->remote_port) != s->outbound_port)
		return 1;
	struct zt_tuple key = { .netns = netns, .port = skops->local_port };
	if (skops->family == AF_INET) {
		if (skops->remote_ip4 != bpf_htonl(0x7f000001))
			return 1;
		key.addr[0] = skops->local_ip4;
		key.family = ZT_FAMILY_V4;
	} else if (skops->family == AF_INET6) {
		__u32 r0 = skops->remote_ip6[0], r1 = skops->remote_ip6[1];
		__u32 r2 = skops->remote_ip6[2], r3 = skops->remote_ip6[3];
		if (v6_is_mapped(r0, r1, r2) && r3 == bpf_htonl(0x7f000001)) {
			key.addr[0] = skops->local_ip6[3];
			key.family = ZT_FAMILY_V4;
		} else if (r0 == 0 && r1 == 0 && r2 == 0 && r3 == bpf_htonl(1)) {
			key.addr[0] = skops->local_ip6[0];
			key.addr[1] = skops->local_ip6[1];
			key.addr[2] = skops->local_ip6[2];
			key.addr[3] = skops->local_ip6[3];
			key.family = ZT_FAMILY_V6;
		} else {
			return 1;
		}
	} else {
		return 1;
	}
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct zt_addr *orig = bpf_map_lookup_elem(&cookie_orig, &cookie);
	if (!orig) {
		/* the app dialled the outbound listener itself */
		count(ZT_MISS_SOCKOPS);
		return 1;
	}
	struct zt_addr value = *orig;
	if (bpf_map_update_elem(&tuple_orig, &key, &value, BPF_ANY))
		count(ZT_ERROR_SOCKOPS);
	return 1;
}

struct sockaddr_in_ {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct sockaddr_in6_ {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

SEC("cgroup/getsockopt")
int zt_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST)
		return 1;
	__u32 family;
	if (ctx->level == SOL_IP)
		family = ZT_FAMILY_V4;
	else if (ctx->level == SOL_IPV6)
		family = ZT_FAMILY_V6;
	else
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (!is_enrolled(netns))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	/* on the proxy's accepted socket the peer is the client */
	struct zt_tuple key = {
		.netns = netns,
		.port = bpf_ntohs((__u16)sk->dst_port),
		.family = family,
	};
	if (family == ZT_FAMILY_V4) {
		key.addr[0] = sk->dst_ip4;
	} else {
		key.addr[0] = sk->dst_ip6[0];
		key.addr[1] = sk->dst_ip6[1];
		key.addr[2] = sk->dst_ip6[2];
		key.addr[3] = sk->dst_ip6[3];
	}
	struct zt_addr *orig = bpf_map_lookup_elem(&tuple_orig, &key);
	if (!orig || orig->family != family) {
		count(ZT_MISS_GETSOCKOPT);
		return 1;
	}
	int len;
	if (family == ZT_FAMILY_V4) {
		struct sockaddr_in_ *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->family = AF_INET;
		sa->port = orig->port;
		sa->addr = orig->addr[0];
		__builtin_memset(sa->zero, 0, sizeof(sa->zero));
		len = sizeof(*sa);
	} else {
		struct sockaddr_in6_ *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->family = AF_INET6;
		sa->port = orig->port;
		sa->flowinfo = 0;
		sa->addr[0] = orig->addr[0];
		sa->addr[1] = orig->addr[1];
		sa->addr[2] = orig->addr[2];
		sa->addr[3] = orig->addr[3];
		sa->scope_id = 0;
		len = sizeof(*sa);
	}
	/* Two separate 4-byte context stores: clang -O2 would merge them into one 8-byte store,
	 * which the verifier rejects ("invalid bpf_context access off=32 size=8"). */
	ctx->optlen = len;
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	count(ZT_ORIGINAL_DST_ANSWERED);
	return 1;
}

static __always_inline struct zt_addr *redirected_peer(struct bpf_sock_addr *ctx)
{
	struct zt_settings *s = get_settings();
	if (!s || (ctx->user_port != bpf_htons(s->outbound_port) &&
		   !(s->dns_port && ctx->user_port == bpf_htons(s->dns_port))))
		return NULL;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	return bpf_map_lookup_elem(&cookie_orig, &cookie);
}

SEC("cgroup/getpeername4")
int zt_getpeername4(struct bpf_sock_addr *ctx)
{
	if ((bpf_ntohl(ctx->user_ip4) >> 24) != 127)
		return 1;
	struct zt_addr *orig = redirected_peer(ctx);
	if (!orig || orig->family != ZT_FAMILY_V4)
		return 1;
	ctx->user_ip4 = orig->addr[0];
	ctx->user_port = orig->port;
	count(ZT_PEERNAME_REWRITTEN);
	return 1;
}

SEC("cgroup/getpeername6")
int zt_getpeername6(struct bpf_sock_addr *ctx)
{
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	/* ::ffff:127.x.x.x: the outbound listener (127.0.0.1) or a v4-mapped DNS redirect */
	int mapped = v6_is_mapped(a0, a1, a2) && (bpf_ntohl(a3) >> 24) == 127;
	int loopback = a0 == 0 && a1 == 0 && a2 == 0 && a3 == bpf_htonl(1);
	if (!mapped && !loopback && !in_dns6_prefix(a0, a1, a2))
		return 1;
	struct zt_addr *orig = redirected_peer(ctx);
	if (!orig)
		return 1;
	if (orig->family == ZT_FAMILY_V4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = orig->addr[0];
	} else {
		ctx->user_ip6[0] = orig->addr[0];
		ctx->user_ip6[1] = orig->addr[1];
		ctx->user_ip6[2] = orig->addr[2];
		ctx->user_ip6[3] = orig->addr[3];
	}
	ctx->user_port = orig->port;
	count(ZT_PEERNAME_REWRITTEN);
	return 1;
}

SEC("sk_lookup")
int zt_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct zt_settings *s = get_settings();
	if (!s || ctx->local_port == s->hbone_port)
		return SK_PASS;
	struct zt_endpoint local = {}, remote = {};
	if (ctx->family == AF_INET) {
		local.addr[0] = ctx->local_ip4;
		remote.addr[0] = ctx->remote_ip4;
		local.family = remote.family = ZT_FAMILY_V4;
	} else if (ctx->family == AF_INET6) {
		local.addr[0] = ctx->local_ip6[0];
		local.addr[1] = ctx->local_ip6[1];
		local.addr[2] = ctx->local_ip6[2];
		local.addr[3] = ctx->local_ip6[3];
		remote.addr[0] = ctx->remote_ip6[0];
		remote.addr[1] = ctx->remote_ip6[1];
		remote.addr[2] = ctx->remote_ip6[2];
		remote.addr[3] = ctx->remote_ip6[3];
		local.family = remote.family = ZT_FAMILY_V6;
	} else {
		return SK_PASS;
	}
	remote.port = bpf_ntohs(ctx->remote_port);
	if (bpf_map_lookup_elem(&delivery_bypass, &remote)) {
		count(ZT_DELIVERY_BYPASSED);
		return SK_PASS;
	}
	struct zt_net probe = {
		.prefixlen = 32 + (remote.family == ZT_FAMILY_V4 ? 32 : 128),
		.family = remote.family,
		.addr = { remote.addr[0], remote.addr[1], remote.addr[2], remote.addr[3] },
	};
	if (bpf_map_lookup_elem(&probe_sources, &probe)) {
		count(ZT_PROBE_BYPASSED);
		return SK_PASS;
	}
	/* Not a pod address (loopback, say): the normal lookup applies. */
	struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_listeners, &local);
	if (!sk) {
		if (bpf_map_lookup_elem(&captured_addrs, &local)) {
			count(ZT_REFUSED_NO_LISTENER);
			return SK_DROP;
		}
		return SK_PASS;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	count(err ? ZT_ERROR_SK_LOOKUP : ZT_REDIRECT_INBOUND);
	return SK_PASS;
}
