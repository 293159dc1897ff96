#!/usr/bin/env python3
"""A SentencePiece-style (llama) GGUF vocabulary with goldens from sentencepiece itself.

Trains a small SentencePiece BPE model (byte fallback, identity normalization, whitespace kept,
as llama's tokenizer is configured), writes its vocabulary into a tensor-less GGUF the way
llama.cpp's converter does (tokens, scores, token types), and saves sentencepiece's own ids for
hard strings. Writes tests/fixtures/spm/{vocab.gguf,goldens.json}.
Run: python3 scripts/gen_spm_vocab.py
"""
import json, os, tempfile
import sentencepiece as spm
import gguf

root = os.path.join(os.path.dirname(__file__), "..")
out = os.path.join(root, "tests", "fixtures", "spm")
os.makedirs(out, exist_ok=True)
text = open(os.path.join(root, "tests", "fixtures", "smollm2", "text.txt")).read()
tmp = tempfile.mkdtemp()
with open(os.path.join(tmp, "corpus.txt"), "w") as f:
    f.write(text + "\nCafé naïve résumé. Numbers 1234567890.\n")
spm.SentencePieceTrainer.train(
    input=os.path.join(tmp, "corpus.txt"), model_prefix=os.path.join(tmp, "m"), vocab_size=400, model_type="bpe",
    byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    split_digits=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "m.model"))

tokens, scores, types = [], [], []
for i in range(sp.vocab_size()):
    tokens.append(sp.id_to_piece(i))
    scores.append(sp.get_score(i))
    if sp.is_unknown(i):
        types.append(gguf.TokenType.UNKNOWN)
    elif sp.is_control(i):
        types.append(gguf.TokenType.CONTROL)
    elif sp.is_byte(i):
        types.append(gguf.TokenType.BYTE)
    else:
        types.append(gguf.TokenType.NORMAL)

w = gguf.GGUFWriter(os.path.join(out, "vocab.gguf"), "llama")
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_add_eos_token(False)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

hard = ["Hello world", " leading space", "multiple   spaces\tand\ttabs\n\nnewlines", "Café naïve résumé",
        "你好，世界 🙂", "Numbers 1234567890", "def f(x):\n    return x**2", "Python was created", ""]
goldens = [{"text": t, "ids": sp.encode(t), "ids_special": ([1] + sp.encode(t)),
            "decoded": sp.decode(sp.encode(t))} for t in hard]
json.dump(goldens, open(os.path.join(out, "goldens.json"), "w"), ensure_ascii=False, indent=0)
print(len(tokens), "tokens;", len(goldens), "goldens")
