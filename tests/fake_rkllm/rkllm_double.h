/*
 * rkllm_double.h -- our own description of the RKLLM runtime C interface, written for the
 * test double fake_rkllm.c (and the layout probe in build.py). It is NOT the vendor header:
 * it was written from rkllmd's fact sheet (docs/RKLLM.md) and declares only what the double
 * needs, in our own words. Layouts must match the vendor's byte for byte on LP64.
 *
 * Pick the ABI family at compile time:
 *   -DRKLLM_ABI=120  releases 1.2.0 / 1.2.1b1 (family D; 1.2.0 multimodal shape)
 *   -DRKLLM_ABI=12   releases 1.2.1 .. 1.2.3  (family E)
 *   -DRKLLM_ABI=13   release  1.3.0           (family F)
 *   -DRKLLM_ABI=131  release  1.3.1           (family F': 1.3.0 plus an audio part in the
 *                    multimodal input; second-hand, see docs/RKLLM.md)
 */
#ifndef RKLLM_DOUBLE_H
#define RKLLM_DOUBLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef RKLLM_ABI
#define RKLLM_ABI 13
#endif
#if RKLLM_ABI != 120 && RKLLM_ABI != 12 && RKLLM_ABI != 13 && RKLLM_ABI != 131
#error "RKLLM_ABI must be 120, 12, 13 or 131"
#endif
/* 1.3.0 and 1.3.1 share everything but the multimodal input */
#define RKLLM_FAMILY_F (RKLLM_ABI == 13 || RKLLM_ABI == 131)

#ifdef __cplusplus
extern "C" {
#endif

/* opaque instance pointer handed out by rkllm_init */
typedef void *LLMHandle;

/* what a result callback is being told */
typedef enum {
    RKLLM_RUN_NORMAL = 0,  /* one token's text */
    RKLLM_RUN_WAITING = 1, /* bytes of an unfinished UTF-8 character */
    RKLLM_RUN_FINISH = 2,  /* the run ended */
    RKLLM_RUN_ERROR = 3    /* the run failed */
} LLMCallState;

typedef enum {
    RKLLM_INPUT_PROMPT = 0,
    RKLLM_INPUT_TOKEN = 1,
    RKLLM_INPUT_EMBED = 2,
    RKLLM_INPUT_MULTIMODAL = 3
} RKLLMInputType;

typedef enum {
    RKLLM_INFER_GENERATE = 0,
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
    RKLLM_INFER_GET_LOGITS = 2
} RKLLMInferMode;

/* model-independent extras; 120 bytes in every family */
typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
#if RKLLM_ABI == 120
    uint8_t reserved[106];
#else
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
#endif
} RKLLMExtendParam;

/* everything rkllm_init needs */
typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#if RKLLM_FAMILY_F
    bool ignore_eos_token;
    bool is_async;
#else
    bool is_async;
    const char *img_start;
    const char *img_end;
    const char *img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct {
    const char *lora_adapter_path;
    const char *lora_adapter_name;
    float scale;
} RKLLMLoraAdapter;

typedef struct {
    float *embed;
    size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
    int32_t *input_ids;
    size_t n_tokens;
} RKLLMTokenInput;

#if RKLLM_ABI == 120
typedef struct {
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
} RKLLMMultiModelInput;
#elif RKLLM_ABI == 12
typedef struct {
    char *prompt;
    float *image_embed;
    size_t n_image_tokens;
    size_t n_image;
    size_t image_width;
    size_t image_height;
} RKLLMMultiModalInput;
#else
/* the vendor leaves these two sub-struct types unnamed; we name them for the layout probe */
typedef struct {
    float *image_embed;
    size_t n_image_tokens;
    size_t n_image;
    const char *image_start;
    const char *image_end;
    const char *image_content;
    size_t image_width;
    size_t image_height;
} RKLLMImageInput;

typedef struct {
    float *video_embed;
    size_t n_frame_tokens;
    size_t n_frame_per_video;
    size_t n_video;
    const char *video_start;
    const char *video_end;
    const char *video_content;
    size_t frame_width;
    size_t frame_height;
} RKLLMVideoInput;

#if RKLLM_ABI == 131
/* 1.3.1: a third unnamed sub-struct, appended after video */
typedef struct {
    float *audio_embed;
    size_t n_audio_tokens;
    size_t n_audio;
    const char *audio_start;
    const char *audio_end;
    const char *audio_content;
} RKLLMAudioInput;
#endif

typedef struct {
    char *prompt;
    RKLLMImageInput image;
    RKLLMVideoInput video;
#if RKLLM_ABI == 131
    RKLLMAudioInput audio;
#endif
} RKLLMMultiModalInput;
#endif

/* one input of a run; the payload is an unnamed union */
typedef struct {
#if RKLLM_ABI != 120
    const char *role;
    bool enable_thinking;
#endif
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
#if RKLLM_ABI == 120
        RKLLMMultiModelInput multimodal_input;
#else
        RKLLMMultiModalInput multimodal_input;
#endif
    };
} RKLLMInput;

typedef struct {
    const char *lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
    int save_prompt_cache;
    const char *prompt_cache_path;
} RKLLMPromptCacheParam;

#if RKLLM_ABI != 120
typedef struct {
    float *encoder_k_cache;
    float *encoder_v_cache;
    float *encoder_mask;
    int32_t *encoder_pos;
    int num_tokens;
} RKLLMCrossAttnParam;
#endif

#if RKLLM_FAMILY_F
/* per-run sampling override */
typedef struct {
    int32_t top_k;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
} RKLLMSamplingParam;
#endif

typedef struct {
    RKLLMInferMode mode;
    RKLLMLoraParam *lora_params;
    RKLLMPromptCacheParam *prompt_cache_params;
#if RKLLM_FAMILY_F
    RKLLMSamplingParam *sampling_params; /* NULL: keep the init values */
    int keep_history;
    int32_t max_new_tokens; /* <= 0: keep the init value */
#else
    int keep_history;
#endif
} RKLLMInferParam;

typedef struct {
    const float *hidden_states;
    int embd_size;
    int num_tokens;
} RKLLMResultLastHiddenLayer;

typedef struct {
    const float *logits;
    int vocab_size;
    int num_tokens;
} RKLLMResultLogits;

#if RKLLM_ABI != 120
typedef struct {
    float prefill_time_ms;
    int prefill_tokens;
    float generate_time_ms;
    int generate_tokens;
    float memory_usage_mb;
} RKLLMPerfStat;
#endif

/* what the result callback receives; pointers inside live only during the call */
typedef struct {
    const char *text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
    RKLLMResultLogits logits;
#if RKLLM_ABI != 120
    RKLLMPerfStat perf; /* a value, filled at FINISH */
#endif
} RKLLMResult;

#if RKLLM_ABI == 120
typedef void (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#else
/* returns 0 to go on, 1 to pause (2 in 1.3.0: drop the output buffer early) */
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#endif

#if RKLLM_FAMILY_F
typedef int (*LLMTokenizerCallback)(void *userdata, const char *text, int32_t text_len, int32_t *tokens,
                                    int32_t n_tokens_max);
typedef int (*LLMGetEmbedCallback)(void *userdata, int32_t *tokens, uint64_t num_tokens, void *embed,
                                   uint64_t len);

typedef struct {
    LLMResultCallback result_callback;
    void *result_userdata;
    LLMTokenizerCallback tokenizer_callback;
    void *tokenizer_userdata;
    LLMGetEmbedCallback embed_callback;
    void *embed_userdata;
} RKLLMCallback;
#define RKLLM_INIT_CALLBACK_T RKLLMCallback *
#else
#define RKLLM_INIT_CALLBACK_T LLMResultCallback
#endif

RKLLMParam rkllm_createDefaultParam(void);
int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLM_INIT_CALLBACK_T callback);
int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *lora_adapter);
int rkllm_load_prompt_cache(LLMHandle handle, const char *prompt_cache_path);
int rkllm_release_prompt_cache(LLMHandle handle);
int rkllm_destroy(LLMHandle handle);
int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params, void *userdata);
int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params,
                    void *userdata);
int rkllm_abort(LLMHandle handle);
int rkllm_is_running(LLMHandle handle);
#if RKLLM_ABI == 120
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt);
#else
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos);
int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes);
int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
                             const char *tool_response_str);
int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *cross_attn_params);
#endif
int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt, const char *prompt_prefix,
                            const char *prompt_postfix);

#ifdef __cplusplus
}
#endif

#endif /* RKLLM_DOUBLE_H */
