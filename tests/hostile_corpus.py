"""A corpus of hostile, malformed and odd ONNX inputs for the interface contract (``tests/test_hostile.py``).

:func:`build_corpus` writes every case into its own folder under ``root`` and a sentinel secret file
beside those folders (``root/secret.bin``). A case whose external data points outside its folder
points at that file, so a test can assert its bytes never reach any output. Nothing here imports
halp_onnx beyond the small graph builder: the corpus is plain files.

Each :class:`Case` says what a correct tool does with it: ``"refuse"`` (exit 2, one line, ``match`` in
it when given), ``"ok"`` (exit 0) or ``None`` (either; never a crash).
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from halp_onnx.builder import GraphBuilder

TOKEN = b"S3CR3T!!"  # the sentinel file is this token repeated; no output may contain it
SECRET_SIZE = 1 << 20  # larger than any weight of the base model, so a leak would load


@dataclass(frozen=True)
class Case:
    name: str
    path: Path  # what the tool is given
    expect: str | None = None  # "refuse", "ok" or None (either)
    match: str | None = None  # a substring of the refusal line
    slow: bool = False  # takes seconds (a model that goes all the way through)

    @property
    def folder(self) -> Path:
        return self.path.parent


def secret_windows() -> list[bytes]:
    """Every 8-byte window of the repeated token: no output may contain any of them."""
    doubled = TOKEN * 2
    return [doubled[i:i + len(TOKEN)] for i in range(len(TOKEN))]


# ---------------------------------------------------------------------------------------- models
def base_model(opset: int = 17, *, names: dict[str, str] | None = None) -> onnx.ModelProto:
    """A small prunable net: Conv-Relu-Conv-Relu-GAP-Flatten-Gemm, input x 1x3x32x32, output y 1x4 (wide
    enough that ``compile --latency 0.9`` on trt-v100 finds a smaller model)."""
    b = GraphBuilder("hostile", seed=3, opset=opset)
    x = b.input("x", [1, 3, 32, 32])
    y = b.op("Relu", [b.conv(x, 3, 64)])
    y = b.op("Relu", [b.conv(y, 64, 128)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    w, bias = b.weight((4, 128)), b.const(np.zeros(4, np.float32))
    b.nodes.append(helper.make_node("Gemm", [y, w, bias], ["y"], name="head", transB=1))
    b.output("y")
    model = b.model()
    del model.graph.value_info[:]
    if names:
        rename(model, names)
    return model


def rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename nodes and tensors (``old -> new``) everywhere in the graph."""
    g = model.graph
    for node in g.node:
        node.name = names.get(node.name, node.name)
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for item in coll:
            item.name = names.get(item.name, item.name)


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def node(model: onnx.ModelProto, op_type: str, index: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op_type][index]


def set_attr(n: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    keep = [a for a in n.attribute if a.name != attr.name]
    del n.attribute[:]
    n.attribute.extend(keep + [attr])


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def first_weight(model: onnx.ModelProto) -> onnx.TensorProto:
    return init(model, node(model, "Conv").input[1])


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def cast_weights(model: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """Every float tensor (weights, inputs, outputs) as ``dtype`` (a float type)."""
    m = copy(model)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    for i, t in enumerate(m.graph.initializer):
        arr = numpy_helper.to_array(t)
        if arr.dtype == np.float32:
            new = numpy_helper.from_array(arr.astype(np_type), t.name)
            m.graph.initializer[i].CopyFrom(new)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = dtype
    return m


def external(model: onnx.ModelProto, folder: Path, location: str = "model.onnx.data") -> onnx.ModelProto:
    """The model with all initializers in one external file ``folder/location`` (written), as a proto."""
    folder.mkdir(parents=True, exist_ok=True)
    m = copy(model)
    offset = 0
    blob = bytearray()
    for t in m.graph.initializer:
        data = numpy_helper.to_array(t).tobytes()
        t.ClearField("raw_data")
        for field in ("float_data", "int64_data", "int32_data", "double_data"):
            t.ClearField(field)
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        blob += data
        offset += len(data)
    (folder / location).write_bytes(bytes(blob))
    return m


def set_external(t: onnx.TensorProto, **entries: str | None) -> None:
    """Replace external-data entries of ``t`` (None removes the key)."""
    have = {e.key: e.value for e in t.external_data}
    for k, v in entries.items():
        if v is None:
            have.pop(k, None)
        else:
            have[k] = v
    del t.external_data[:]
    for k, v in have.items():
        e = t.external_data.add()
        e.key, e.value = k, v


def point_all_at(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """Every external tensor reads ``location`` from offset 0 (its own length)."""
    m = copy(model)
    for t in m.graph.initializer:
        set_external(t, location=location, offset="0")
    return m


# ---------------------------------------------------------------------------------------- corpus
def build_corpus(root: Path) -> list[Case]:
    """Write every case under ``root`` (one folder each) and the sentinel ``root/secret.bin``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "secret.bin"
    secret.write_bytes(TOKEN * (SECRET_SIZE // len(TOKEN)))
    cases: list[Case] = []
    base = base_model()

    def folder(name: str) -> Path:
        d = root / "cases" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add(name: str, model_or_write: onnx.ModelProto | Callable[[Path], Path | None] | bytes,
            expect: str | None = "refuse", match: str | None = None, *, slow: bool = False,
            filename: str = "model.onnx") -> None:
        d = folder(name)
        path = d / filename
        if isinstance(model_or_write, onnx.ModelProto):
            save(model_or_write, path)
        elif isinstance(model_or_write, bytes):
            path.write_bytes(model_or_write)
        else:
            got = model_or_write(path)
            path = got if got is not None else path
        cases.append(Case(name, path, expect, match, slow))

    # -- the controls: a good model, plain and with external data --------------------------------
    add("good", base, "ok", slow=True)
    add("good_external", lambda p: save(external(base, p.parent), p), "ok", slow=True)

    # -- paths -------------------------------------------------------------------------------------
    add("missing_file", lambda p: None, match="no such file")
    add("directory", lambda p: (p.mkdir(), None)[1], match="directory")

    def loop(p: Path) -> None:
        os.symlink(p.with_name("b.onnx"), p)
        os.symlink(p, p.with_name("b.onnx"))

    add("symlink_loop", loop, match="symbolic link")
    add("dangling_symlink", lambda p: os.symlink(p.with_name("gone.onnx"), p), match="no such file")
    add("fifo", lambda p: os.mkfifo(p), match="not a regular file")
    add("dev_zero", lambda p: os.symlink("/dev/zero", p), match="not a regular file")
    add("dev_null", lambda p: os.symlink("/dev/null", p), match="not a regular file")

    def unreadable(p: Path) -> None:
        save(base, p)
        p.chmod(0)

    # root reads anything: then the model is fine
    add("unreadable", unreadable, None if os.geteuid() == 0 else "refuse")
    add("name_with_escapes", b"garbage", filename="evil\x1b[31mred\n\u202eoverride.onnx")
    add("missing_with_escapes", lambda p: None, match="no such file", filename="gone\x1b]0;title\x07\r.onnx")

    # -- bytes that are not a model ----------------------------------------------------------------
    full = base.SerializeToString()
    add("empty_file", b"")
    add("random_bytes", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    add("truncated_half", full[: len(full) // 2])
    add("truncated_tail", full[:-7])
    add("truncated_head", full[3:])
    add("json_text", b'{"graph": {"node": []}}\n')
    add("gzipped", gzip.compress(full))
    add("zero_bytes", b"\x00" * 1024)
    add("tensor_proto", numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString())
    add("graph_proto", base.graph.SerializeToString())
    add("node_proto", base.graph.node[0].SerializeToString())
    no_graph = onnx.ModelProto()
    no_graph.ir_version = 8
    no_graph.opset_import.add().version = 17
    add("no_graph", no_graph)

    # -- external data -------------------------------------------------------------------------------
    def ext_case(name: str, edit: Callable[[onnx.ModelProto, Path], onnx.ModelProto], match: str | None = None,
                 expect: str | None = "refuse") -> None:
        def write(p: Path) -> Path:
            m = external(base, p.parent)
            return save(edit(m, p.parent), p)

        add(name, write, expect, match)

    ext_case("ext_absolute", lambda m, d: point_all_at(m, str(secret)), "absolute")
    ext_case("ext_dotdot", lambda m, d: point_all_at(m, "../../secret.bin"), "outside")
    ext_case("ext_nested_dotdot", lambda m, d: point_all_at(m, "sub/../../../secret.bin"), "outside")

    def symlink_out(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        os.symlink(secret, d / "link.bin")
        return point_all_at(m, "link.bin")

    ext_case("ext_symlink_escape", symlink_out, "outside")

    def symlinked_dir(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        os.symlink(secret.parent, d / "up")
        return point_all_at(m, "up/secret.bin")

    ext_case("ext_symlinked_dir", symlinked_dir, "outside")

    def dev_zero(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        os.symlink("/dev/zero", d / "zero.bin")
        return point_all_at(m, "zero.bin")

    ext_case("ext_dev_zero", dev_zero)

    def fifo(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        os.mkfifo(d / "pipe.bin")
        return point_all_at(m, "pipe.bin")

    ext_case("ext_fifo", fifo, "not a regular file")

    def subdir(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        (d / "adir").mkdir()
        return point_all_at(m, "adir")

    ext_case("ext_directory", subdir, "not a regular file")
    ext_case("ext_missing", lambda m, d: point_all_at(m, "nothere.bin"), "no such file")

    def edit_first(**entries: str | None) -> Callable[[onnx.ModelProto, Path], onnx.ModelProto]:
        def edit(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
            set_external(first_weight(m), **entries)
            return m
        return edit

    ext_case("ext_offset_past_eof", edit_first(offset="1000000"), "past the end")
    ext_case("ext_length_past_eof", edit_first(offset="0", length="999999999999"))
    ext_case("ext_length_short", edit_first(length="12"))
    ext_case("ext_negative_offset", edit_first(offset="-4"))
    ext_case("ext_offset_not_a_number", edit_first(offset="four"))
    ext_case("ext_no_location", edit_first(location=None), "location")
    ext_case("ext_empty_location", edit_first(location=""), "location")
    ext_case("ext_nul_in_location", edit_first(location="model.onnx.data\x00../../secret.bin"))
    ext_case("ext_newline_location", edit_first(location="a\nb\x1b[2J.bin"))
    ext_case("ext_backslash", lambda m, d: point_all_at(m, "..\\..\\secret.bin"))
    ext_case("ext_unknown_key", edit_first(basepath="/etc"), None, expect=None)
    def in_subfolder(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        (d / "w").mkdir()
        (d / "model.onnx.data").rename(d / "w" / "data.bin")
        for t in m.graph.initializer:
            set_external(t, location="w/data.bin")
        return m

    ext_case("ext_inside_subfolder_ok", in_subfolder, expect="ok")

    def inside_via_dotdot(m: onnx.ModelProto, d: Path) -> onnx.ModelProto:
        (d / "w").mkdir()
        for t in m.graph.initializer:
            set_external(t, location="w/../model.onnx.data")
        return m

    ext_case("ext_dotdot_staying_inside_ok", inside_via_dotdot, expect="ok")

    # -- tensor data -----------------------------------------------------------------------------------
    def weight_edit(name: str, edit: Callable[[onnx.TensorProto], None], match: str | None = None,
                    expect: str | None = "refuse") -> None:
        m = copy(base)
        edit(first_weight(m))
        add(name, m, expect, match)

    weight_edit("raw_data_short", lambda t: setattr(t, "raw_data", t.raw_data[:-4]), "raw_data")
    weight_edit("raw_data_long", lambda t: setattr(t, "raw_data", t.raw_data + b"\0" * 8), "raw_data")

    def float_data_short(t: onnx.TensorProto) -> None:
        vals = np.frombuffer(t.raw_data, np.float32)[:-1]
        t.ClearField("raw_data")
        t.float_data.extend(vals.tolist())

    weight_edit("float_data_short", float_data_short)

    def no_data(t: onnx.TensorProto) -> None:
        t.ClearField("raw_data")

    weight_edit("weight_without_data", no_data)
    weight_edit("negative_dims", lambda t: t.dims.__setitem__(0, -8))
    weight_edit("undefined_dtype", lambda t: setattr(t, "data_type", 0))
    weight_edit("unknown_dtype", lambda t: setattr(t, "data_type", 99))

    def huge_dims(t: onnx.TensorProto) -> None:
        t.ClearField("raw_data")
        del t.dims[:]
        t.dims.extend([1 << 20, 1 << 20, 3, 3])

    weight_edit("huge_declared_weight", huge_dims)

    def segment(t: onnx.TensorProto) -> None:
        t.segment.begin, t.segment.end = 0, 10

    weight_edit("segmented_tensor", segment)

    def string_weight(t: onnx.TensorProto) -> None:
        n = int(np.prod(t.dims))
        t.ClearField("raw_data")
        t.data_type = TensorProto.STRING
        t.string_data.extend([b"w"] * n)

    weight_edit("string_weight", string_weight)

    # -- dtypes ----------------------------------------------------------------------------------------
    add("bf16_weights", cast_weights(base, TensorProto.BFLOAT16), None, slow=True)
    add("fp16_weights", cast_weights(base, TensorProto.FLOAT16), None, slow=True)
    add("fp64_weights", cast_weights(base, TensorProto.DOUBLE), None, slow=True)

    def int8_weight() -> onnx.ModelProto:
        m = copy(base)
        t = first_weight(m)
        arr = (numpy_helper.to_array(t) * 50).astype(np.int8)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        return m

    add("int8_conv_weight", int8_weight())

    def quantized() -> onnx.ModelProto:
        m = copy(base)
        t = first_weight(m)
        arr = (numpy_helper.to_array(t) * 50).astype(np.int8)
        q = numpy_helper.from_array(arr, t.name + "_q")
        scale = numpy_helper.from_array(np.array(0.02, np.float32), t.name + "_s")
        zero = numpy_helper.from_array(np.array(0, np.int8), t.name + "_z")
        m.graph.initializer.remove(t)
        m.graph.initializer.extend([q, scale, zero])
        m.graph.node.insert(0, helper.make_node("DequantizeLinear", [q.name, scale.name, zero.name], [t.name],
                                                name="dq"))
        return m

    add("int8_dequantized_weight", quantized(), None, slow=True)

    # -- node attributes and inputs ----------------------------------------------------------------------
    def node_edit(name: str, edit: Callable[[onnx.ModelProto], None], match: str | None = None,
                  expect: str | None = "refuse") -> None:
        m = copy(base)
        edit(m)
        add(name, m, expect, match)

    node_edit("conv_group_string", lambda m: set_attr(node(m, "Conv"), helper.make_attribute("group", "two")),
              "group")
    node_edit("conv_group_float", lambda m: set_attr(node(m, "Conv"), helper.make_attribute("group", 1.0)), "group")
    node_edit("conv_group_zero", lambda m: set_attr(node(m, "Conv"), helper.make_attribute("group", 0)), "group")
    node_edit("conv_group_not_dividing", lambda m: set_attr(node(m, "Conv", 1), helper.make_attribute("group", 3)),
              "group")
    node_edit("conv_kernel_shape_length",
              lambda m: set_attr(node(m, "Conv"), helper.make_attribute("kernel_shape", [3, 3, 3])), "kernel_shape")
    node_edit("conv_kernel_shape_wrong",
              lambda m: set_attr(node(m, "Conv"), helper.make_attribute("kernel_shape", [5, 5])), "kernel_shape")
    node_edit("conv_pads_length", lambda m: set_attr(node(m, "Conv"), helper.make_attribute("pads", [1, 1])), "pads")
    node_edit("conv_strides_zero", lambda m: set_attr(node(m, "Conv"), helper.make_attribute("strides", [0, 0])),
              "strides")
    node_edit("conv_unknown_attribute", lambda m: set_attr(node(m, "Conv"), helper.make_attribute("flavour", 1)),
              "flavour")
    node_edit("conv_one_input", lambda m: node(m, "Conv").input.__delitem__(slice(1, None)), "Conv")
    node_edit("conv_no_inputs", lambda m: node(m, "Conv").input.__delitem__(slice(None)), "Conv")
    node_edit("conv_four_inputs", lambda m: node(m, "Conv").input.append(node(m, "Conv").input[1]), "Conv")
    node_edit("conv_empty_weight_name", lambda m: node(m, "Conv").input.__setitem__(1, ""), "Conv")

    def weight_rank2(m: onnx.ModelProto) -> None:
        t = first_weight(m)
        arr = numpy_helper.to_array(t).reshape(t.dims[0], -1)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))

    node_edit("conv_weight_rank_2", weight_rank2)
    node_edit("gemm_one_input", lambda m: node(m, "Gemm").input.__delitem__(slice(1, None)), "Gemm")
    node_edit("gemm_trans_string", lambda m: set_attr(node(m, "Gemm"), helper.make_attribute("transB", "yes")),
              "transB")
    node_edit("relu_two_outputs", lambda m: node(m, "Relu").output.append("extra"), "Relu")
    node_edit("flatten_axis_tensor",
              lambda m: set_attr(node(m, "Flatten"),
                                 helper.make_attribute("axis", numpy_helper.from_array(np.array(1, np.int64)))),
              "axis")

    # -- shapes and memory -------------------------------------------------------------------------------
    def input_dims(dims: list) -> onnx.ModelProto:
        m = copy(base)
        shape = m.graph.input[0].type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            if isinstance(d, str):
                shape.dim.add().dim_param = d
            else:
                shape.dim.add().dim_value = d
        return m

    add("huge_input", input_dims([1, 3, 100000, 100000]), "refuse", "memory")
    add("huge_batch", input_dims([1 << 40, 3, 32, 32]), "refuse", "memory")
    add("zero_size_dim", input_dims([0, 3, 32, 32]))
    add("negative_dim", input_dims([1, 3, -32, 32]))
    add("symbolic_dims", input_dims(["N", 3, 32, 32]), None)  # compile fills a dynamic batch (--batch 1)
    add("wrong_rank_input", input_dims([1, 3, 32]))
    add("wrong_channels_input", input_dims([1, 5, 32, 32]))

    def no_shape() -> onnx.ModelProto:
        m = copy(base)
        m.graph.input[0].type.tensor_type.ClearField("shape")
        return m

    add("input_without_shape", no_shape(), match="--input-shape")

    def sequence_input() -> onnx.ModelProto:
        m = copy(base)
        m.graph.input[0].type.CopyFrom(helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 3, 32, 32])))
        return m

    add("sequence_input", sequence_input())

    def huge_intermediate() -> onnx.ModelProto:
        m = copy(base)
        m.graph.initializer.append(numpy_helper.from_array(np.array([1, 64, 100000, 100000], np.int64), "big"))
        relu = node(m, "Relu")
        at = list(m.graph.node).index(relu) + 1
        m.graph.node.insert(at, helper.make_node("GlobalAveragePool", [relu.output[0]], ["pooled"], name="pool"))
        m.graph.node.insert(at + 1, helper.make_node("Expand", ["pooled", "big"], ["expanded"], name="blowup"))
        node(m, "Conv", 1).input[0] = "expanded"
        return m

    add("huge_intermediate", huge_intermediate(), "refuse", "memory")

    def huge_constant_of_shape() -> onnx.ModelProto:
        m = copy(base)
        m.graph.initializer.append(numpy_helper.from_array(np.array([1, 8, 100000, 100000], np.int64), "cs"))
        m.graph.node.append(helper.make_node("ConstantOfShape", ["cs"], ["zeros"], name="zeros"))
        m.graph.node.append(helper.make_node("ReduceSum", ["zeros"], ["zsum"], name="zsum", keepdims=0))
        m.graph.output.append(helper.make_tensor_value_info("zsum", TensorProto.FLOAT, None))
        return m

    add("huge_constant_of_shape", huge_constant_of_shape(), "refuse", "memory")

    # -- graph structure -----------------------------------------------------------------------------------
    empty = copy(base)
    del empty.graph.node[:], empty.graph.output[:], empty.graph.initializer[:]
    add("empty_graph", empty)
    no_inputs = copy(base)
    no_inputs.graph.initializer.append(numpy_helper.from_array(np.ones((1, 3, 32, 32), np.float32), "x"))
    del no_inputs.graph.input[:]
    add("no_inputs", no_inputs, None)  # inspect shows no groups; prune and compile: nothing to prune

    passthrough = copy(base)
    del passthrough.graph.node[:], passthrough.graph.initializer[:]
    passthrough.graph.output[0].name = "x"
    add("identity_graph", passthrough, None)

    def dup_output() -> onnx.ModelProto:
        m = copy(base)
        a, b_ = node(m, "Relu"), node(m, "Relu", 1)
        b_.output[0] = a.output[0]
        return m

    add("duplicate_node_outputs", dup_output(), match="produced")

    def dup_graph_output() -> onnx.ModelProto:
        m = copy(base)
        m.graph.output.append(m.graph.output[0])
        return m

    add("duplicate_graph_outputs", dup_graph_output(), match="twice")

    def dup_input() -> onnx.ModelProto:
        m = copy(base)
        m.graph.input.append(m.graph.input[0])
        return m

    add("duplicate_graph_inputs", dup_input(), match="twice")

    def input_shadowed() -> onnx.ModelProto:
        m = copy(base)
        relu = node(m, "Relu")
        relu.output[0] = "x"
        node(m, "Conv", 1).input[0] = "x"
        return m

    add("node_output_is_graph_input", input_shadowed(), match="x")

    def undefined() -> onnx.ModelProto:
        m = copy(base)
        node(m, "Conv", 1).input[0] = "nowhere"
        return m

    add("undefined_input", undefined(), match="nowhere")

    def cycle() -> onnx.ModelProto:
        m = copy(base)
        node(m, "Conv").input[0] = node(m, "Relu", 1).output[0]
        m.graph.input[0].name = "unused_x"
        return m

    add("cycle", cycle(), match="cycle")

    def self_loop() -> onnx.ModelProto:
        m = copy(base)
        r = node(m, "Relu")
        r.input[0] = r.output[0]
        return m

    add("self_loop", self_loop(), match="cycle")

    def missing_graph_output() -> onnx.ModelProto:
        m = copy(base)
        m.graph.output[0].name = "unproduced"
        return m

    add("output_not_produced", missing_graph_output(), match="unproduced")

    def custom_op(imported: bool) -> onnx.ModelProto:
        m = copy(base)
        relu = node(m, "Relu")
        relu.op_type, relu.domain = "Frobnicate", "example.ops"
        if imported:
            m.opset_import.add().CopyFrom(helper.make_opsetid("example.ops", 1))
        return m

    add("custom_domain_op", custom_op(True))
    add("custom_domain_not_imported", custom_op(False), match="example.ops")

    def unknown_default_op() -> onnx.ModelProto:
        m = copy(base)
        node(m, "Relu").op_type = "Relux"
        return m

    add("unknown_default_op", unknown_default_op(), match="Relux")

    def sparse_constant() -> onnx.ModelProto:
        m = copy(base)
        values = numpy_helper.from_array(np.array([1.0], np.float32), "v")
        indices = numpy_helper.from_array(np.array([0], np.int64), "i")
        sparse = helper.make_sparse_tensor(values, indices, [4])
        m.graph.node.append(helper.make_node("Constant", [], ["sc"], name="sparse_const", sparse_value=sparse))
        m.graph.node.append(helper.make_node("Add", ["y", "sc"], ["y2"], name="add_sparse"))
        m.graph.output[0].name = "y2"
        return m

    add("constant_sparse_value", sparse_constant(), None, slow=True)

    def sparse_initializer() -> onnx.ModelProto:
        m = copy(base)
        values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
        indices = numpy_helper.from_array(np.array([0], np.int64), "sp_i")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 4]))
        m.graph.node.append(helper.make_node("Add", ["y", "sp"], ["y2"], name="add_sparse"))
        m.graph.output[0].name = "y2"
        return m

    add("sparse_initializer", sparse_initializer(), None, slow=True)

    def sparse_bad_indices() -> onnx.ModelProto:
        m = sparse_initializer()
        m.graph.sparse_initializer[0].indices.CopyFrom(numpy_helper.from_array(np.array([99], np.int64), "sp_i"))
        return m

    add("sparse_index_out_of_range", sparse_bad_indices())

    def opset(version: int) -> onnx.ModelProto:
        m = copy(base)
        m.opset_import[0].version = version
        return m

    add("opset_7", opset(7), match="opset 7")
    add("opset_99", opset(99), match="opset 99")
    no_default = copy(base)
    del no_default.opset_import[:]
    add("no_default_opset", no_default, match="opset")
    ir99 = copy(base)
    ir99.ir_version = 99
    add("ir_version_99", ir99, None)
    ir0 = copy(base)
    ir0.ir_version = 0
    add("ir_version_0", ir0, None)

    def with_if() -> onnx.ModelProto:
        m = copy(base)
        cond = numpy_helper.from_array(np.array(True), "cond")
        m.graph.initializer.append(cond)
        then = helper.make_graph([helper.make_node("Identity", ["y"], ["t_out"])], "then", [],
                                 [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 4])])
        other = helper.make_graph([helper.make_node("Neg", ["y"], ["e_out"])], "else", [],
                                  [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 4])])
        m.graph.node.append(helper.make_node("If", ["cond"], ["y2"], name="branch", then_branch=then,
                                             else_branch=other))
        m.graph.output[0].name = "y2"
        return m

    add("if_subgraph", with_if(), None, slow=True)

    def bad_subgraph() -> onnx.ModelProto:
        m = with_if()
        sub = node(m, "If").attribute[0].g
        sub.node[0].input[0] = "undefined_in_branch"
        return m

    add("if_subgraph_undefined_input", bad_subgraph())

    def local_function() -> onnx.ModelProto:
        m = copy(base)
        relu = node(m, "Relu")
        relu.op_type, relu.domain = "MyRelu", "local"
        fn = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                  [helper.make_opsetid("", 17)])
        m.functions.append(fn)
        m.opset_import.add().CopyFrom(helper.make_opsetid("local", 1))
        return m

    add("local_function", local_function(), None, slow=True)

    # -- hostile names -------------------------------------------------------------------------------------
    esc = "\x1b[31mred\x1b[0m"
    add("ansi_node_name_undefined", _renamed_undefined(base, f"conv{esc}\nFAKE: all fine"), match="nowhere")
    add("newline_tensor_name", _undefined_named(base, "line1\nline2\r\tend"), match="line1")
    add("bidi_names", _undefined_named(base, "abc\u202edcba\u2066x\u2069"), match="abc")
    add("c1_control_name", _undefined_named(base, "nul\x00bell\x07csi\x9b31m"), match="nul")
    add("very_long_name", _undefined_named(base, "n" * 20000))
    add("ansi_names_good_model", base_model(names={"head": f"head{esc}\n", "y": "y"}), None, slow=True)

    def weird_name_opset_domain() -> onnx.ModelProto:
        m = custom_op(False)
        node(m, "Frobnicate").domain = f"dom{esc}\n"
        return m

    add("ansi_domain", weird_name_opset_domain())
    return cases


def _undefined_named(base: onnx.ModelProto, name: str) -> onnx.ModelProto:
    m = copy(base)
    node(m, "Conv", 1).input[0] = name + "nowhere"
    return m


def _renamed_undefined(base: onnx.ModelProto, node_name: str) -> onnx.ModelProto:
    m = copy(base)
    n = node(m, "Conv", 1)
    n.name = node_name
    n.input[0] = "nowhere"
    return m


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry of a folder (recursively, not following links): a regular file's bytes' digest, a
    link's target, or the kind of entry; what a run must leave unchanged."""
    import hashlib

    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    out[rel] = f"unreadable:{p.stat().st_size}"
            else:
                out[rel] = "special"
    return out


def remove_corpus(root: Path) -> None:
    for p in Path(root).rglob("*"):
        if not p.is_symlink() and p.is_file():
            try:
                p.chmod(0o644)
            except OSError:
                pass
    shutil.rmtree(root, ignore_errors=True)
