// gguf-check FILE.gguf [--full]
//
// Parses FILE with ggml's own GGUF parser (gguf_init_from_file, loading every tensor's data into a ggml
// context so truncated or misaligned data is caught) and prints what it read as one JSON object:
//   {"version", "alignment", "data_offset", "n_kv", "n_tensors",
//    "kv": {key: {"type": T, "value": V}}                 scalars and strings by value,
//          {key: {"type": "arr", "elem": T, "n": N, "fnv": H [, "value": [...] with --full]}},
//    "tensors": [{"name", "type", "ne": [...], "offset", "size", "fnv"}]}
// "fnv" is the FNV-1a 64 hash (hex) of the array payload / tensor bytes, so two files compare by JSON.
// Exit code 1 (and a message on stderr) when ggml rejects the file.
#include "common.h"

#include <ggml.h>
#include <gguf.h>
#include <inttypes.h>
#include <stdbool.h>

static size_t gguf_type_size_of(enum gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

static void print_scalar(const void *p, enum gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: printf("%u", *(const uint8_t *)p); break;
        case GGUF_TYPE_INT8: printf("%d", *(const int8_t *)p); break;
        case GGUF_TYPE_UINT16: printf("%u", *(const uint16_t *)p); break;
        case GGUF_TYPE_INT16: printf("%d", *(const int16_t *)p); break;
        case GGUF_TYPE_UINT32: printf("%" PRIu32, *(const uint32_t *)p); break;
        case GGUF_TYPE_INT32: printf("%" PRId32, *(const int32_t *)p); break;
        case GGUF_TYPE_UINT64: printf("%" PRIu64, *(const uint64_t *)p); break;
        case GGUF_TYPE_INT64: printf("%" PRId64, *(const int64_t *)p); break;
        case GGUF_TYPE_FLOAT32: printf("%.9g", (double)*(const float *)p); break;
        case GGUF_TYPE_FLOAT64: printf("%.17g", *(const double *)p); break;
        case GGUF_TYPE_BOOL: printf("%s", *(const int8_t *)p ? "true" : "false"); break;
        default: printf("null");
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--full") != 0)) {
        fprintf(stderr, "usage: gguf-check FILE.gguf [--full]\n");
        return 2;
    }
    bool full = argc == 3;
    struct ggml_context *meta = NULL;
    struct gguf_init_params params = {.no_alloc = false, .ctx = &meta};
    struct gguf_context *ctx = gguf_init_from_file(argv[1], params);
    if (!ctx) {
        fprintf(stderr, "error: ggml's gguf_init_from_file rejected %s\n", argv[1]);
        return 1;
    }
    printf("{\"version\": %u, \"alignment\": %zu, \"data_offset\": %zu, ", gguf_get_version(ctx),
           gguf_get_alignment(ctx), gguf_get_data_offset(ctx));
    int64_t n_kv = gguf_get_n_kv(ctx), n_t = gguf_get_n_tensors(ctx);
    printf("\"n_kv\": %" PRId64 ", \"n_tensors\": %" PRId64 ",\n\"kv\": {", n_kv, n_t);
    for (int64_t i = 0; i < n_kv; i++) {
        const char *key = gguf_get_key(ctx, i);
        enum gguf_type t = gguf_get_kv_type(ctx, i);
        printf(i ? ",\n  " : "\n  ");
        json_str(stdout, key, strlen(key));
        if (t == GGUF_TYPE_ARRAY) {
            enum gguf_type et = gguf_get_arr_type(ctx, i);
            size_t n = gguf_get_arr_n(ctx, i);
            uint64_t h = FNV_OFFSET;
            if (et == GGUF_TYPE_STRING) {
                for (size_t j = 0; j < n; j++) {
                    const char *s = gguf_get_arr_str(ctx, i, j);
                    uint64_t len = strlen(s);
                    h = fnv1a64(&len, 8, h);
                    h = fnv1a64(s, len, h);
                }
            } else {
                h = fnv1a64(gguf_get_arr_data(ctx, i), n * gguf_type_size_of(et), h);
            }
            printf(": {\"type\": \"arr\", \"elem\": \"%s\", \"n\": %zu, \"fnv\": \"%016" PRIx64 "\"",
                   gguf_type_name(et), n, h);
            if (full) {
                printf(", \"value\": [");
                for (size_t j = 0; j < n; j++) {
                    if (j) printf(", ");
                    if (et == GGUF_TYPE_STRING) {
                        const char *s = gguf_get_arr_str(ctx, i, j);
                        json_str(stdout, s, strlen(s));
                    } else {
                        print_scalar((const char *)gguf_get_arr_data(ctx, i) + j * gguf_type_size_of(et), et);
                    }
                }
                printf("]");
            }
            printf("}");
        } else if (t == GGUF_TYPE_STRING) {
            const char *s = gguf_get_val_str(ctx, i);
            printf(": {\"type\": \"str\", \"value\": ");
            json_str(stdout, s, strlen(s));
            printf("}");
        } else {
            printf(": {\"type\": \"%s\", \"value\": ", gguf_type_name(t));
            print_scalar(gguf_get_val_data(ctx, i), t);
            printf("}");
        }
    }
    printf("},\n\"tensors\": [");
    for (int64_t i = 0; i < n_t; i++) {
        const char *name = gguf_get_tensor_name(ctx, i);
        const int64_t *ne = gguf_get_tensor_ne(ctx, i);
        struct ggml_tensor *t = ggml_get_tensor(meta, name);
        if (!t) {
            fprintf(stderr, "error: %s: tensor %s missing from the loaded context\n", argv[1], name);
            return 1;
        }
        int nd = GGML_MAX_DIMS;
        while (nd > 1 && ne[nd - 1] == 1) nd--;
        printf(i ? ",\n  " : "\n  ");
        printf("{\"name\": ");
        json_str(stdout, name, strlen(name));
        printf(", \"type\": \"%s\", \"ne\": [", ggml_type_name(gguf_get_tensor_type(ctx, i)));
        for (int d = 0; d < nd; d++) printf(d ? ", %" PRId64 : "%" PRId64, ne[d]);
        printf("], \"offset\": %zu, \"size\": %zu, \"fnv\": \"%016" PRIx64 "\"}", gguf_get_tensor_offset(ctx, i),
               gguf_get_tensor_size(ctx, i), fnv1a64(t->data, ggml_nbytes(t), FNV_OFFSET));
    }
    printf("]}\n");
    ggml_free(meta);
    gguf_free(ctx);
    return 0;
}
