"""`--model hicom`: HICom as an lmms-eval chat model, on this project's `video-text-to-text` pipeline.

The pipeline and `HicomProcessor` already do what an evaluation needs: the chat prompt, frames sampled uniformly over
the whole clip, the instruction taken from the question with its answer options removed, left-padded batches. This
class only turns lmms-eval's chat requests into the pipeline's chat messages, and the answers back. lmms-eval finds
it through the `lmms_eval.models` entry point (`manifest.py`).
"""

from accelerate import PartialState
from loguru import logger as eval_logger
from tqdm import tqdm
from transformers import pipeline

from lmms_eval import utils
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from processing_hicom import TASK, VideoTextToTextPipeline

DTYPES = ("auto", "float32", "bfloat16", "float16")
# lmms-eval's `generation_kwargs` that `generate()` takes as they are (`temperature` and `until` are translated).
GENERATION_KEYS = ("max_new_tokens", "top_p", "top_k", "num_beams", "repetition_penalty")
# What one request's unusable inputs raise: a missing video (FileNotFoundError is an OSError), an unreadable one or a
# block HICom cannot take (ValueError), a malformed request (TypeError).
INPUT_ERRORS = (ValueError, TypeError, OSError)


def _integer(name: str, value, minimum: int = 1) -> int:
    """A model argument that must be a whole number (lmms-eval passes numbers from the command line as int or str)."""
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < minimum:
        raise ValueError(f"hicom model: `{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def to_pipeline_chat(messages) -> list[dict]:
    """lmms-eval chat messages (`{"type": "video", "url": path}`) as the pipeline's (`{"type": "video", "path": ...}`).

    HICom answers about whole video files: images, audio and clip segments are refused, naming what was given.
    """
    chat = []
    for message in ChatMessages(messages=messages).messages:
        content = []
        for block in message.content:
            if block.type == "text":
                content.append({"type": "text", "text": block.text})
            elif block.type == "video" and isinstance(block.url, str) and block.start_time is block.end_time is None:
                content.append({"type": "video", "path": block.url})
            else:
                raise ValueError(
                    f"hicom model: takes text and whole video files; got a {block.type} block ({block!r:.120})."
                )
        chat.append({"role": message.role, "content": content})
    return chat


def generate_kwargs(gen_kwargs: dict, max_new_tokens: int | None = None) -> dict:
    """A task's `generation_kwargs` as `generate()` arguments: temperature 0 means greedy, as everywhere in lmms-eval;
    `until` is applied to the answers; `max_new_tokens`, when given, replaces the task's."""
    ignored = sorted(set(gen_kwargs) - {*GENERATION_KEYS, "temperature", "do_sample", "until"})
    if ignored:
        eval_logger.warning(f"hicom: ignoring generation arguments it does not know: {ignored}")
    kwargs = {key: gen_kwargs[key] for key in GENERATION_KEYS if gen_kwargs.get(key) is not None}
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    temperature = gen_kwargs.get("temperature") or 0
    if temperature > 0:
        return {**kwargs, "do_sample": True, "temperature": temperature}
    return {key: value for key, value in kwargs.items() if key not in ("top_p", "top_k")} | {"do_sample": False}


def cut_at_stops(answer: str, until) -> str:
    """The answer up to the first of the task's `until` strings (lmms-eval's stop sequences)."""
    for stop in [until] if isinstance(until, str) else until or []:
        answer = answer.split(stop)[0]
    return answer


class Hicom(lmms):
    """HICom on lmms-eval: `--model hicom --model_args pretrained=FOLDER[,num_frames=64,dtype=bfloat16,...]`.

    Args:
        pretrained: a converted HICom folder (`hicom-convert`) or Hub id.
        num_frames: frames sampled uniformly over each whole clip (the paper evaluates 32, 64 and 128).
        dtype: `"auto"` (the checkpoint's), `"float32"`, `"bfloat16"` or `"float16"`.
        device / device_map: where the model runs; by default the first accelerator, else the CPU (one process per
            device under `accelerate launch`).
        attn_implementation: passed to `from_pretrained` (`"sdpa"`, `"eager"`, ...).
        max_new_tokens: when given, replaces the task's `generation_kwargs` value.
        batch_size: requests per `generate()` call (`--batch_size` too; the model argument wins).
        num_workers: pipeline workers that decode the next videos while the model runs.
        trust_remote_code: run the converted folder's own code (default); `False` runs this installed package's.
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        num_frames: int = 32,
        dtype: str = "auto",
        device: str | None = None,
        device_map: str | None = None,
        attn_implementation: str | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        trust_remote_code: bool = True,
    ):
        super().__init__()
        self.num_frames = _integer("num_frames", num_frames)
        self.batch_size = _integer("batch_size", batch_size)
        self.max_new_tokens = None if max_new_tokens is None else _integer("max_new_tokens", max_new_tokens)
        self.num_workers = _integer("num_workers", num_workers, minimum=0)
        if dtype not in DTYPES:
            raise ValueError(f"hicom model: `dtype` must be one of {DTYPES}, got {dtype!r}.")
        # Data parallel under `accelerate launch`: lmms-eval gives each process its rank's requests; each process needs
        # its own GPU (the pipeline's default would put every copy on the first one).
        if device is None and device_map is None and PartialState().num_processes > 1:
            device = PartialState().device
        model_kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        self.pipe = pipeline(
            TASK,
            model=pretrained,
            pipeline_class=VideoTextToTextPipeline,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            device=device,
            device_map=device_map,
            model_kwargs=model_kwargs,
        )
        self.pipe.model.register_forward_pre_hook(self._log_visual_tokens, with_kwargs=True)
        # With workers, a pipeline call prepares the next batches during generation: give each call several batches.
        self.requests_per_call = self.batch_size * max(1, 4 * self.num_workers)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """As lmms-eval's, except that `--model_args` win over the command line's `--batch_size` / `--device`, which
        lmms-eval passes even when left at their defaults (the base class would fail on a duplicate argument)."""
        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        extra.pop("max_batch_size", None)  # only for `--batch_size auto`, which is not supported
        return cls(**args, **extra)

    def _log_visual_tokens(self, module, args, kwargs):
        """Shows, per request, that its video reached the model: the LLM positions its compressed tokens fill."""
        if kwargs.get("pixel_values_videos") is None:  # decoding steps after the prefill carry no pixels
            return
        tokens = (kwargs["input_ids"] == module.config.video_token_id).sum(-1).tolist()
        frames = kwargs["video_num_frames"].tolist()
        eval_logger.info(f"hicom: frames per video {frames}, visual tokens per request {tokens}")

    def _answer(self, chats: list, generate_kwargs: dict) -> list[dict]:
        """One pipeline result per chat; a chat whose video cannot be prepared gets the pipeline's per-item
        `{"error": ...}` result, and the others are still answered."""
        outputs = self.pipe(
            text=chats,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            num_frames=self.num_frames,
            return_full_text=False,
            **generate_kwargs,
        )
        return [output[0] for output in outputs]

    def generate_until(self, requests) -> list[str]:
        # Requests with the same generation arguments share pipeline calls; the collator restores lmms-eval's order.
        collator = utils.Collator([r.args for r in requests], lambda a: a[3], group_fn=lambda a: a[2], grouping=True)
        answers = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="hicom")
        for chunk in collator.get_batched(n=self.requests_per_call, batch_fn=None):
            gen_kwargs = chunk[0][2]
            results = self._answer_requests(chunk, generate_kwargs(gen_kwargs, self.max_new_tokens))
            for (*_, doc_id, task, _split), result in zip(chunk, results):
                if "error" in result:
                    eval_logger.error(f"hicom: {task} doc {doc_id} is left unanswered: {result['error']}")
                answers.append(cut_at_stops(result.get("generated_text", ""), gen_kwargs.get("until")))
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(answers)

    def _answer_requests(self, chunk, generate_kwargs: dict) -> list[dict]:
        """Pipeline results for lmms-eval request arguments; a request whose chat cannot be built gets its error."""
        results, chats = [None] * len(chunk), {}
        for i, (_, doc_to_messages, _, doc_id, task, split) in enumerate(chunk):
            try:
                chats[i] = to_pipeline_chat(doc_to_messages(self.task_dict[task][split][doc_id]))
            except INPUT_ERRORS as error:
                results[i] = {"error": f"{type(error).__name__}: {error}"}
        if chats:
            for i, result in zip(chats, self._answer(list(chats.values()), generate_kwargs)):
                results[i] = result
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError("hicom model: only generation tasks (`output_type: generate_until`) are supported.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("hicom model: multi-round tasks are not supported.")
