// llama-embed MODEL.gguf PROMPTS_FILE [--pooling none|mean|cls|last|rank]
//
// What llama-embedding computes, printed in full precision and without llama.cpp's asynchronous logger
// (which loses the tail of llama-embedding's stdout when the process exits: on a tiny model most runs lose
// part or all of the JSON). Loads MODEL on the CPU with embeddings on, the model's pooling unless --pooling
// says otherwise (as llama-embedding's --pooling), flash attention off (ggml_soft_max_ext); each line of
// PROMPTS_FILE is tokenized as llama-embedding tokenizes a prompt (llama_tokenize, add_special and
// parse_special on) and decoded as its own sequence. Prints one JSON object:
//   {"n_embd": N, "pooling": P, "prompts": [{"ids": [...], "rows": [[...], ...]}, ...]}
// with, per prompt, the pooled row (n_embd values; rank pooling: the n_cls_out scores) or, without pooling,
// every token's row, as llama_get_embeddings_seq / llama_get_embeddings_ith return them (%.9g).
// Exit code 1 with a message when loading or decoding fails.
#include "common.h"

#include <llama.h>
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

static void print_row(const float *v, int n) {
    printf("[");
    for (int i = 0; i < n; i++) printf(i ? ", %.9g" : "%.9g", (double)v[i]);
    printf("]");
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompts_path = NULL;
    enum llama_pooling_type pooling = LLAMA_POOLING_TYPE_UNSPECIFIED;
    bool bad = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--pooling") && i + 1 < argc) {
            const char *p = argv[++i];
            if (!strcmp(p, "none")) pooling = LLAMA_POOLING_TYPE_NONE;
            else if (!strcmp(p, "mean")) pooling = LLAMA_POOLING_TYPE_MEAN;
            else if (!strcmp(p, "cls")) pooling = LLAMA_POOLING_TYPE_CLS;
            else if (!strcmp(p, "last")) pooling = LLAMA_POOLING_TYPE_LAST;
            else if (!strcmp(p, "rank")) pooling = LLAMA_POOLING_TYPE_RANK;
            else bad = true;
        } else if (!model_path) model_path = argv[i];
        else if (!prompts_path) prompts_path = argv[i];
        else bad = true;
    }
    if (bad || !model_path || !prompts_path) {
        fprintf(stderr, "usage: llama-embed MODEL.gguf PROMPTS_FILE [--pooling none|mean|cls|last|rank]\n");
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.progress_callback = no_progress;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "error: llama.cpp failed to load %s\n", model_path); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);

    struct llama_context_params cp = llama_context_default_params();
    cp.embeddings = true;
    cp.pooling_type = pooling;
    cp.n_ctx = (uint32_t)llama_model_n_ctx_train(model);
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.no_perf = true;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "error: llama_init_from_model failed for %s\n", model_path); return 1; }
    enum llama_pooling_type used = llama_pooling_type(ctx);
    int n_embd = llama_model_n_embd_out(model);
    int n_out = used == LLAMA_POOLING_TYPE_RANK ? (int)llama_model_n_cls_out(model) : n_embd;

    size_t len;
    char *text = read_all(prompts_path, &len);
    printf("{\"n_embd\": %d, \"pooling\": %d, \"prompts\": [", n_embd, (int)used);
    int k = 0;
    for (char *line = text; line && *line;) {
        char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        int32_t cap = (int32_t)n + 16;
        llama_token *ids = malloc(sizeof(llama_token) * (size_t)cap);
        int32_t t = llama_tokenize(vocab, line, (int32_t)n, ids, cap, true, true);
        if (t < 0) {
            cap = -t;
            ids = realloc(ids, sizeof(llama_token) * (size_t)cap);
            t = llama_tokenize(vocab, line, (int32_t)n, ids, cap, true, true);
        }
        if (t <= 0 || (uint32_t)t > cp.n_ctx) {
            fprintf(stderr, "error: prompt %d of %s gives %d tokens (1 to %u)\n", k, prompts_path, t, cp.n_ctx);
            return 1;
        }
        struct llama_batch batch = llama_batch_init(t, 0, 1);
        for (int i = 0; i < t; i++) {
            batch.token[i] = ids[i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = t;
        int rc = llama_decode(ctx, batch);
        if (rc != 0) { fprintf(stderr, "error: llama_decode returned %d on prompt %d\n", rc, k); return 1; }
        printf(k ? ", {\"ids\": [" : "{\"ids\": [");
        for (int i = 0; i < t; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("], \"rows\": [");
        if (used == LLAMA_POOLING_TYPE_NONE) {
            for (int i = 0; i < t; i++) {
                const float *e = llama_get_embeddings_ith(ctx, i);
                if (!e) { fprintf(stderr, "error: no embedding for token %d of prompt %d\n", i, k); return 1; }
                if (i) printf(", ");
                print_row(e, n_embd);
            }
        } else {
            const float *e = llama_get_embeddings_seq(ctx, 0);
            if (!e) { fprintf(stderr, "error: no pooled embedding for prompt %d\n", k); return 1; }
            print_row(e, n_out);
        }
        printf("]}");
        llama_batch_free(batch);
        free(ids);
        k++;
        line = end ? end + 1 : NULL;
    }
    printf("]}\n");
    free(text);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
