"""Importers: foreign chat and instruction data -> chat_sft_v1 JSONL for inbox/.

* `whatsapp`: WhatsApp .txt exports, one person's voice (`import_whatsapp`).
* `generic`: CSV / JSON / JSONL with prompt/response-style columns, HF
  `messages` or ShareGPT `conversations` (`import_generic`).

Each has a CLI (`cadence import <name> --help`) writing to
`--out PATH` or straight into the inbox (`--inbox`, sidecar first, then rename).

Run as: cadence import whatsapp | generic ...
"""
