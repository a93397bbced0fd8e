#!/usr/bin/env python3
"""Write a GGUF's tensors dequantised to F32 (every key/value copied as it is), with llama.cpp's own
gguf-py dequantisers. Used to measure what a load-time conversion costs: run the quantised file and
this exact-F32 twin through `baremetal eval` (docs/FORMATS.md, "Q4_K and Q6_K").

    PYTHONPATH=<llama.cpp>/gguf-py python3 scripts/peer/dequantize-gguf.py IN.gguf OUT.gguf
"""
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGUFWriter, GGUFValueType


def main(src: str, dst: str) -> None:
    r = GGUFReader(src)
    arch = r.fields["general.architecture"]
    w = GGUFWriter(dst, bytes(arch.parts[arch.data[0]]).decode(), endianess=r.endianess)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == GGUFValueType.STRING:
                val = [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(name, val, vtype, sub_type=sub)
        elif vtype == GGUFValueType.STRING:
            w.add_key_value(name, bytes(f.parts[f.data[0]]).decode("utf-8"), vtype)
        else:
            w.add_key_value(name, f.parts[f.data[0]].tolist()[0], vtype)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape.tolist())]
        w.add_tensor(t.name, data.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
