// llama-logits MODEL.gguf TEXT_FILE [--tokens-only] [--no-special] [--max-tokens N] [--logits-out FILE.f32] [--f32-kv]
//
// Loads MODEL with llama.cpp on the CPU, tokenizes TEXT_FILE with llama.cpp's own tokenizer
// (llama_tokenize, add_special=true unless --no-special, parse_special=false) and, unless --tokens-only
// (which loads the vocabulary only), evaluates the first N tokens (default 64) in one batch asking for
// logits at every position. Prints one JSON object:
//   {"n_vocab", "ids": [...], "n_eval", "argmax": [...], "sum": [...], "min": [...], "max": [...]}
// with per-position argmax/sum/min/max of the logits; --logits-out writes the full n_eval x n_vocab
// f32 matrix (little endian, row per position). --f32-kv keeps the KV cache in F32 with flash attention off
// (the default F16 cache rounds K and V, ~1e-3 relative on logits). Exit code 1 with a message when loading
// or decoding fails.
#include "common.h"

#include <llama.h>
#include <math.h>
#include <stdbool.h>

static bool no_progress(float progress, void *ud) {
    (void)progress;
    (void)ud;
    return true;
}

static void quiet_log(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL, *logits_out = NULL;
    bool tokens_only = false, add_special = true, f32_kv = false;
    int max_tokens = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens-only")) tokens_only = true;
        else if (!strcmp(argv[i], "--no-special")) add_special = false;
        else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc) max_tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--logits-out") && i + 1 < argc) logits_out = argv[++i];
        else if (!strcmp(argv[i], "--f32-kv")) f32_kv = true;
        else if (!model_path) model_path = argv[i];
        else if (!text_path) text_path = argv[i];
        else { model_path = NULL; break; }
    }
    if (!model_path || !text_path || max_tokens < 1) {
        fprintf(stderr, "usage: llama-logits MODEL.gguf TEXT_FILE [--tokens-only] [--no-special] "
                        "[--max-tokens N] [--logits-out FILE.f32] [--f32-kv]\n");
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = tokens_only;
    mp.progress_callback = no_progress;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "error: llama.cpp failed to load %s\n", model_path); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);

    size_t len;
    char *text = read_all(text_path, &len);
    int32_t cap = (int32_t)len + 16;
    llama_token *ids = malloc(sizeof(llama_token) * (size_t)cap);
    int32_t n = llama_tokenize(vocab, text, (int32_t)len, ids, cap, add_special, false);
    if (n < 0) {
        cap = -n;
        ids = realloc(ids, sizeof(llama_token) * (size_t)cap);
        n = llama_tokenize(vocab, text, (int32_t)len, ids, cap, add_special, false);
    }
    if (n < 0) { fprintf(stderr, "error: llama_tokenize failed on %s\n", text_path); return 1; }

    printf("{\"n_vocab\": %d, \"ids\": [", n_vocab);
    for (int32_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]");

    if (!tokens_only && n > 0) {
        int n_eval = n < max_tokens ? n : max_tokens;
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t)(n_eval < 64 ? 64 : n_eval);
        cp.n_batch = cp.n_ctx;
        cp.n_ubatch = cp.n_ctx;
        cp.no_perf = true;
        if (f32_kv) {
            cp.type_k = GGML_TYPE_F32;
            cp.type_v = GGML_TYPE_F32;
            cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        }
        struct llama_context *ctx = llama_init_from_model(model, cp);
        if (!ctx) { fprintf(stderr, "error: llama_init_from_model failed for %s\n", model_path); return 1; }
        struct llama_batch batch = llama_batch_init(n_eval, 0, 1);
        for (int i = 0; i < n_eval; i++) {
            batch.token[i] = ids[i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = n_eval;
        int rc = llama_decode(ctx, batch);
        if (rc != 0) { fprintf(stderr, "error: llama_decode returned %d for %s\n", rc, model_path); return 1; }
        FILE *lf = NULL;
        if (logits_out && !(lf = fopen(logits_out, "wb"))) {
            fprintf(stderr, "error: cannot write %s\n", logits_out);
            return 1;
        }
        int *am = malloc(sizeof(int) * (size_t)n_eval);
        double *sm = malloc(sizeof(double) * (size_t)n_eval);
        float *mn = malloc(sizeof(float) * (size_t)n_eval), *mx = malloc(sizeof(float) * (size_t)n_eval);
        int finite = 1;
        for (int i = 0; i < n_eval; i++) {
            const float *l = llama_get_logits_ith(ctx, i);
            if (!l) { fprintf(stderr, "error: no logits at position %d\n", i); return 1; }
            if (lf) fwrite(l, sizeof(float), (size_t)n_vocab, lf);
            am[i] = 0; sm[i] = 0; mn[i] = l[0]; mx[i] = l[0];
            for (int v = 0; v < n_vocab; v++) {
                if (!isfinite(l[v])) finite = 0;
                sm[i] += l[v];
                if (l[v] > mx[i]) { mx[i] = l[v]; am[i] = v; }
                if (l[v] < mn[i]) mn[i] = l[v];
            }
        }
        if (lf) fclose(lf);
        printf(", \"n_eval\": %d, \"finite\": %s, \"argmax\": [", n_eval, finite ? "true" : "false");
        for (int i = 0; i < n_eval; i++) printf(i ? ", %d" : "%d", am[i]);
        printf("], \"sum\": [");
        for (int i = 0; i < n_eval; i++) printf(i ? ", %.9g" : "%.9g", sm[i]);
        printf("], \"min\": [");
        for (int i = 0; i < n_eval; i++) printf(i ? ", %.9g" : "%.9g", (double)mn[i]);
        printf("], \"max\": [");
        for (int i = 0; i < n_eval; i++) printf(i ? ", %.9g" : "%.9g", (double)mx[i]);
        printf("]");
        free(am); free(sm); free(mn); free(mx);
        llama_batch_free(batch);
        llama_free(ctx);
    }
    printf("}\n");
    free(ids);
    free(text);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
