/* A reference client of the worldsdk bridge protocol (docs/protocol.md) in C, with libzmq and msgpack-c.
 *
 * Connects, checks the protocol version, resets a session with a prompt, steps it with actions (the
 * world's key names in turn, or discrete actions 0, 1, ...) and writes every frame to a PPM file.
 *
 *     worldsdk_client [-p PROMPT] [-s SEED] [-n STEPS] [-o DIR] [-t TIMEOUT_MS] [-c raw|shm] [-i FIRST_ID] ENDPOINT
 *     worldsdk_client -p "pong, neon style" -s 7 -n 10 -o frames tcp://127.0.0.1:5555
 *
 * -c shm reads the frames from the server's shared-memory ring (a server on this machine, protocol 1.2)
 * instead of the socket. -i sets the first request id (default 1; ids then count up).
 *
 * Exit status: 0 on success, 1 on a protocol or server error (the server's code and message are printed,
 * also for an error with a nil id: it answers our one request in flight) or a failed handshake, 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <zmq.h>

#define PROTOCOL_MAJOR 1
#define PROTOCOL_MINOR 2 /* 1.2 fields are sent only with -c shm, so a 1.0 or 1.1 server serves the rest */
#define MAX_PARTS 64
#define MAX_KEYS 64
#define SLOT_HEADER_BYTES 64 /* a ring slot: u64 seq (little-endian), zero padding, then the frames */

typedef struct {
    void *socket;
    void *monitor; /* handshake events of the socket: a wrong CURVE setup fails at once instead of timing out */
    uint64_t next_id;
    int timeout_ms;
    char ring_name[256]; /* the shared-memory ring mapped for codec shm ("" when none) */
    const unsigned char *ring;
    size_t ring_size;
} client_t;

/* One received reply: the header message, its decoded map (which points into it) and the payload parts. */
typedef struct {
    zmq_msg_t head;
    msgpack_unpacked header;
    zmq_msg_t parts[MAX_PARTS];
    int num_parts; /* payload parts, not counting the header */
    int open;
} reply_t;

static void fail(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "worldsdk_client: ");
    vfprintf(stderr, fmt, args);
    fprintf(stderr, "\n");
    va_end(args);
    exit(1);
}

/* -- msgpack helpers -------------------------------------------------------------------------- */

static void pack_string(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static const msgpack_object *map_get(const msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static int str_equals(const msgpack_object *o, const char *s) {
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) && memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static int64_t as_int(const msgpack_object *o, const char *what) {
    if (o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (int64_t)o->via.u64;
    if (o != NULL && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
    fail("reply field %s is not an integer", what);
    return 0;
}

/* -- messages --------------------------------------------------------------------------------- */

static void reply_free(reply_t *r) {
    if (!r->open) return;
    msgpack_unpacked_destroy(&r->header);
    zmq_msg_close(&r->head);
    for (int i = 0; i < r->num_parts; i++) zmq_msg_close(&r->parts[i]);
    r->num_parts = 0;
    r->open = 0;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A handshake failure from the socket monitor ends the client: ZeroMQ would retry it forever. */
static void check_handshake(client_t *c) {
    zmq_msg_t event, address;
    zmq_msg_init(&event);
    if (zmq_msg_recv(&event, c->monitor, ZMQ_DONTWAIT) < 0) return;
    uint16_t code;
    memcpy(&code, zmq_msg_data(&event), sizeof code); /* frame 1: u16 event, u32 value (native order) */
    zmq_msg_close(&event);
    zmq_msg_init(&address);
    zmq_msg_recv(&address, c->monitor, 0); /* frame 2: the endpoint */
    zmq_msg_close(&address);
    if (code == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) fail("handshake failed: the server refused this client's CURVE key");
    if (code == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || code == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        fail("handshake failed: the server needs CURVE (this client speaks plain ZeroMQ) or speaks another protocol");
}

/* Send the packed header (and no payload), then wait for the reply with the same id. An error reply with a
 * nil id is the server saying it could not read our request's id: we have one request in flight, so it is ours. */
static void request(client_t *c, msgpack_sbuffer *header, uint64_t id, reply_t *r) {
    if (zmq_send(c->socket, header->data, header->size, 0) < 0) fail("send: %s", zmq_strerror(errno));
    int64_t deadline = now_ms() + c->timeout_ms;
    for (;;) {
        zmq_pollitem_t items[2] = {{c->socket, 0, ZMQ_POLLIN, 0}, {c->monitor, 0, ZMQ_POLLIN, 0}};
        int64_t left = deadline - now_ms();
        if (left <= 0) fail("no reply within %d ms: is the server running?", c->timeout_ms);
        if (zmq_poll(items, 2, (long)left) < 0) fail("poll: %s", zmq_strerror(errno));
        if (items[1].revents & ZMQ_POLLIN) check_handshake(c);
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        zmq_msg_init(&r->head);
        if (zmq_msg_recv(&r->head, c->socket, 0) < 0) fail("recv: %s", zmq_strerror(errno));
        msgpack_unpacked_init(&r->header);
        r->open = 1;
        r->num_parts = 0;
        int more = zmq_msg_more(&r->head);
        while (more) {
            if (r->num_parts == MAX_PARTS) fail("reply has more than %d parts", MAX_PARTS);
            zmq_msg_t *part = &r->parts[r->num_parts];
            zmq_msg_init(part);
            if (zmq_msg_recv(part, c->socket, 0) < 0) fail("recv payload: %s", zmq_strerror(errno));
            r->num_parts++;
            more = zmq_msg_more(part);
        }
        /* the decoded strings point into the header message, so it stays open until reply_free */
        size_t offset = 0;
        if (msgpack_unpack_next(&r->header, zmq_msg_data(&r->head), zmq_msg_size(&r->head), &offset) != MSGPACK_UNPACK_SUCCESS ||
            r->header.data.type != MSGPACK_OBJECT_MAP)
            fail("reply header is not a msgpack map");
        const msgpack_object *h = &r->header.data;
        const msgpack_object *rid = map_get(h, "id");
        int is_error = str_equals(map_get(h, "type"), "error");
        int nil_id = rid == NULL || rid->type == MSGPACK_OBJECT_NIL;
        if (!(is_error && nil_id) && (rid == NULL || rid->type != MSGPACK_OBJECT_POSITIVE_INTEGER || rid->via.u64 != id)) {
            reply_free(r); /* a late reply to an earlier request */
            continue;
        }
        if (is_error) {
            const msgpack_object *code = map_get(h, "code"), *message = map_get(h, "message");
            int code_ok = code && code->type == MSGPACK_OBJECT_STR, message_ok = message && message->type == MSGPACK_OBJECT_STR;
            fail("server error [%.*s]: %.*s", code_ok ? (int)code->via.str.size : 0, code_ok ? code->via.str.ptr : "",
                 message_ok ? (int)message->via.str.size : 0, message_ok ? message->via.str.ptr : "");
        }
        return;
    }
}

static void begin(msgpack_sbuffer *sbuf, msgpack_packer *pk, const char *type, uint64_t id, uint32_t fields) {
    msgpack_sbuffer_clear(sbuf);
    msgpack_pack_map(pk, 2 + fields);
    pack_string(pk, "type");
    pack_string(pk, type);
    pack_string(pk, "id");
    msgpack_pack_uint64(pk, id);
}

/* -- frames ----------------------------------------------------------------------------------- */

static uint64_t read_u64le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Map (read-only) the ring a shm reply names; a reset may move the session to a new ring. */
static void map_ring(client_t *c, const msgpack_object *name) {
    if (name == NULL || name->type != MSGPACK_OBJECT_STR || name->via.str.size == 0 || name->via.str.size >= sizeof c->ring_name - 1)
        fail("shm frames name no ring");
    if (c->ring != NULL && strlen(c->ring_name) == name->via.str.size && memcmp(c->ring_name, name->via.str.ptr, name->via.str.size) == 0)
        return;
    if (c->ring != NULL) munmap((void *)c->ring, c->ring_size);
    c->ring_name[0] = '/'; /* POSIX names start with a slash; the server sends the bare name */
    memcpy(c->ring_name + 1, name->via.str.ptr, name->via.str.size);
    c->ring_name[name->via.str.size + 1] = '\0';
    if (memchr(c->ring_name + 1, '/', name->via.str.size)) fail("ring name %s has a slash", c->ring_name);
    int fd = shm_open(c->ring_name, O_RDONLY, 0);
    if (fd < 0) fail("cannot open the server's frame ring %s: %s (shm needs a server on this machine, same user)", c->ring_name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fail("fstat %s: %s", c->ring_name, strerror(errno));
    c->ring_size = (size_t)st.st_size;
    c->ring = mmap(NULL, c->ring_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (c->ring == MAP_FAILED) fail("mmap %s: %s", c->ring_name, strerror(errno));
    memmove(c->ring_name, c->ring_name + 1, strlen(c->ring_name)); /* keep the bare name for the comparison above */
}

static int write_frames(client_t *c, const reply_t *r, const char *dir, int first_index, char *session, size_t session_len) {
    const msgpack_object *h = &r->header.data;
    const msgpack_object *sid = map_get(h, "session");
    if (sid == NULL || sid->type != MSGPACK_OBJECT_STR || sid->via.str.size >= session_len) fail("reply has no session id");
    memcpy(session, sid->via.str.ptr, sid->via.str.size);
    session[sid->via.str.size] = '\0';
    const msgpack_object *meta = map_get(h, "frames");
    int shm = str_equals(map_get(meta, "codec"), "shm");
    if (!(shm || str_equals(map_get(meta, "codec"), "raw")) || !str_equals(map_get(meta, "dtype"), "uint8"))
        fail("expected raw or shm uint8 frames");
    const msgpack_object *shape = map_get(meta, "shape");
    if (shape == NULL || shape->type != MSGPACK_OBJECT_ARRAY || shape->via.array.size != 4) fail("frames need a 4-d shape");
    int64_t t = as_int(&shape->via.array.ptr[0], "shape[0]"), height = as_int(&shape->via.array.ptr[1], "shape[1]");
    int64_t width = as_int(&shape->via.array.ptr[2], "shape[2]"), channels = as_int(&shape->via.array.ptr[3], "shape[3]");
    if (channels != 3 || r->num_parts != (shm ? 0 : 1)) fail("expected RGB frames, in one part (raw) or none (shm)");
    size_t frame_bytes = (size_t)(height * width * 3);
    const unsigned char *data;
    const unsigned char *slot = NULL;
    uint64_t seq = 0;
    if (shm) {
        map_ring(c, map_get(meta, "ring"));
        int64_t offset = as_int(map_get(meta, "offset"), "frames.offset");
        seq = (uint64_t)as_int(map_get(meta, "seq"), "frames.seq");
        if (offset < SLOT_HEADER_BYTES || (size_t)offset + (size_t)t * frame_bytes > c->ring_size) fail("shm frames lie outside the ring");
        slot = c->ring + offset - SLOT_HEADER_BYTES;
        if (read_u64le(slot) != seq) fail("ring chunk %" PRIu64 " was overwritten before it was read", seq);
        data = c->ring + offset;
    } else {
        if (zmq_msg_size((zmq_msg_t *)&r->parts[0]) != (size_t)t * frame_bytes) fail("frame payload has the wrong size");
        data = zmq_msg_data((zmq_msg_t *)&r->parts[0]);
    }
    for (int64_t i = 0; i < t; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/frame_%05d.ppm", dir, first_index + (int)i);
        FILE *f = fopen(path, "wb");
        if (f == NULL) fail("cannot write %s: %s", path, strerror(errno));
        fprintf(f, "P6\n%" PRId64 " %" PRId64 "\n255\n", width, height);
        fwrite(data + i * frame_bytes, 1, frame_bytes, f);
        fclose(f);
    }
    /* the server rewrites a slot only `ring_slots` chunks later; seq unchanged means we wrote what it sent */
    if (shm && read_u64le(slot) != seq) fail("ring chunk %" PRIu64 " was overwritten while it was read", seq);
    return (int)t;
}

/* -- main ------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    const char *prompt = NULL, *out_dir = "frames", *codec = "raw";
    const char *usage = "usage: %s [-p PROMPT] [-s SEED] [-n STEPS] [-o DIR] [-t TIMEOUT_MS] [-c raw|shm] [-i FIRST_ID] ENDPOINT\n";
    long long seed = -1;
    uint64_t first_id = 1;
    int steps = 8, timeout_ms = 30000, opt;
    while ((opt = getopt(argc, argv, "p:s:n:o:t:c:i:h")) != -1) {
        switch (opt) {
            case 'p': prompt = optarg; break;
            case 's': seed = atoll(optarg); break;
            case 'n': steps = atoi(optarg); break;
            case 'o': out_dir = optarg; break;
            case 't': timeout_ms = atoi(optarg); break;
            case 'c': codec = optarg; break;
            case 'i': first_id = strtoull(optarg, NULL, 10); break;
            default: fprintf(stderr, usage, argv[0]); return 2;
        }
    }
    if (optind != argc - 1 || (strcmp(codec, "raw") != 0 && strcmp(codec, "shm") != 0)) {
        fprintf(stderr, usage, argv[0]);
        return 2;
    }
    const char *endpoint = argv[optind];
    mkdir(out_dir, 0755);

    void *context = zmq_ctx_new();
    client_t c = {.socket = zmq_socket(context, ZMQ_DEALER), .next_id = first_id, .timeout_ms = timeout_ms};
    int linger = 0;
    char routing_id[16];
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    routing_id[0] = 'c';
    for (int i = 1; i < 16; i++) routing_id[i] = (char)(1 + rand() % 255);
    zmq_setsockopt(c.socket, ZMQ_ROUTING_ID, routing_id, sizeof routing_id);
    zmq_setsockopt(c.socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c.socket, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    char monitor_address[64];
    snprintf(monitor_address, sizeof monitor_address, "inproc://worldsdk-monitor-%d", (int)getpid());
    if (zmq_socket_monitor(c.socket, monitor_address,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0)
        fail("monitor: %s", zmq_strerror(errno));
    c.monitor = zmq_socket(context, ZMQ_PAIR);
    zmq_setsockopt(c.monitor, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(c.monitor, monitor_address) != 0) fail("monitor connect: %s", zmq_strerror(errno));
    if (zmq_connect(c.socket, endpoint) != 0) fail("connect %s: %s", endpoint, zmq_strerror(errno));

    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    reply_t r = {.num_parts = 0, .open = 0};

    /* hello: version check and the world's action space and key names */
    uint64_t id = c.next_id++;
    begin(&sbuf, &pk, "hello", id, 2);
    pack_string(&pk, "v");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, PROTOCOL_MAJOR);
    msgpack_pack_int(&pk, PROTOCOL_MINOR);
    pack_string(&pk, "client");
    pack_string(&pk, "worldsdk-c-example");
    request(&c, &sbuf, id, &r);
    const msgpack_object *world = map_get(&r.header.data, "world");
    const msgpack_object *name = map_get(world, "name");
    const msgpack_object *action = map_get(world, "action");
    const msgpack_object *key_map = map_get(world, "key_map");
    if (strcmp(codec, "shm") == 0) { /* offered only by a 1.2 server on a loopback or ipc endpoint */
        const msgpack_object *codecs = map_get(&r.header.data, "codecs");
        int offered = 0;
        for (uint32_t i = 0; codecs != NULL && codecs->type == MSGPACK_OBJECT_ARRAY && i < codecs->via.array.size; i++)
            offered |= str_equals(&codecs->via.array.ptr[i], "shm");
        if (!offered) fail("the server offers no shared-memory frames (it must be a 1.2 server on this machine): use -c raw");
    }
    char keys[MAX_KEYS][64];
    int num_keys = 0;
    if (key_map != NULL && key_map->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < key_map->via.map.size && num_keys < MAX_KEYS; i++) {
            const msgpack_object *k = &key_map->via.map.ptr[i].key;
            if (k->type == MSGPACK_OBJECT_STR && k->via.str.size < 64) {
                memcpy(keys[num_keys], k->via.str.ptr, k->via.str.size);
                keys[num_keys++][k->via.str.size] = '\0';
            }
        }
    }
    int64_t discrete_n = str_equals(map_get(action, "kind"), "discrete") ? as_int(map_get(action, "n"), "action.n") : 0;
    if (num_keys == 0 && discrete_n == 0) fail("the world has no key map and no discrete actions: extend this client's actions");
    int name_ok = name != NULL && name->type == MSGPACK_OBJECT_STR;
    printf("world %.*s: %d keys, protocol %d.%d\n", name_ok ? (int)name->via.str.size : 1, name_ok ? name->via.str.ptr : "?",
           num_keys, PROTOCOL_MAJOR, PROTOCOL_MINOR);
    reply_free(&r);

    /* reset with a prompt and a seed */
    char session[64] = "";
    id = c.next_id++;
    int shm = strcmp(codec, "shm") == 0;
    begin(&sbuf, &pk, "reset", id, shm ? 3 : 2);
    if (shm) {
        pack_string(&pk, "codec");
        pack_string(&pk, "shm");
    }
    pack_string(&pk, "prompt");
    if (prompt) pack_string(&pk, prompt); else msgpack_pack_nil(&pk);
    pack_string(&pk, "seed");
    if (seed >= 0) msgpack_pack_uint64(&pk, (uint64_t)seed); else msgpack_pack_nil(&pk);
    request(&c, &sbuf, id, &r);
    int written = write_frames(&c, &r, out_dir, 0, session, sizeof session);
    reply_free(&r);
    printf("reset: session %s\n", session);

    /* steps: key names in turn (or discrete actions 0, 1, ...) */
    for (int i = 0; i < steps; i++) {
        id = c.next_id++;
        begin(&sbuf, &pk, "step", id, 2);
        pack_string(&pk, "session");
        pack_string(&pk, session);
        pack_string(&pk, "action");
        if (num_keys > 0) pack_string(&pk, keys[i % num_keys]); else msgpack_pack_int64(&pk, i % discrete_n);
        request(&c, &sbuf, id, &r);
        written += write_frames(&c, &r, out_dir, written, session, sizeof session);
        reply_free(&r);
    }

    /* close the session */
    id = c.next_id++;
    begin(&sbuf, &pk, "close", id, 1);
    pack_string(&pk, "session");
    pack_string(&pk, session);
    request(&c, &sbuf, id, &r);
    reply_free(&r);
    printf("wrote %d frames to %s\n", written, out_dir);

    msgpack_sbuffer_destroy(&sbuf);
    if (c.ring != NULL) munmap((void *)c.ring, c.ring_size);
    zmq_socket_monitor(c.socket, NULL, 0);
    zmq_close(c.monitor);
    zmq_close(c.socket);
    zmq_ctx_term(context);
    return 0;
}
