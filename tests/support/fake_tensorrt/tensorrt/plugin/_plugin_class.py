"""The plugin objects a ``tensorrt.plugin`` creator returns (plugin/_plugin_class.py of the wheel).

TensorRT drives them in this order, and so does the fake builder: ``get_output_data_types`` (the register function
sees *fake* ShapeExprs), ``get_output_shapes`` (real expressions), ``get_supported_format_combinations`` (the
autotune function, if any, sees concrete shapes), ``configure_plugin``, ``get_valid_tactics``, ``set_tactic``; for
AOT ``get_launch_params`` (``aot_impl`` is called with the input TensorDescs, EVERY attribute the plugin was
created with, positionally, the output TensorDescs and the tactic) and ``get_kernel``.
"""

from __future__ import annotations

import tensorrt as trt

from ._autotune import _TypeFormatCombination
from ._tensor import KernelLaunchParams, Shape, ShapeExpr, ShapeExprs, SymExprs, SymInt32, SymIntExpr, TensorDesc
from ._utils import field_for


class _TemplatePluginBase(trt.IPluginV3, trt.IPluginV3QuickCore, trt.IPluginV3QuickBuild):
    def __init__(self, name, namespace, num_outputs):
        trt.IPluginV3.__init__(self)
        self.plugin_version = "1"
        self.plugin_namespace = namespace
        self.plugin_name = name
        self.num_outputs = num_outputs
        self.input_types = []
        self.aliased_map = {}  # output index -> input index (-1: none)
        self.autotune_combs = []
        self.supported_combs = {}
        self.curr_comb = None
        self._tactic = 0

    def get_num_outputs(self):
        return self.num_outputs

    def _call_register(self, input_descs):
        outs = self.register_function(*input_descs, **self.attrs)
        return outs if isinstance(outs, tuple) else (outs,)

    def get_output_data_types(self, input_types, ranks):
        self.input_types = input_types
        descs = []
        for dtype, rank in zip(input_types, ranks, strict=True):
            d = TensorDesc()
            d.dtype, d.shape_expr = dtype, ShapeExprs(rank, _is_dummy=True)
            d._immutable = True
            descs.append(d)
        index_of = {id(d): i for i, d in enumerate(descs)}
        outs = self._call_register(descs)
        self.output_types = [o.dtype for o in outs]
        self.aliased_map = {i: index_of[id(o.get_aliased())] if o.get_aliased() is not None else -1
                            for i, o in enumerate(outs)}
        return self.output_types

    def get_output_shapes(self, inputs, shape_inputs, exprBuilder):  # noqa: N803 - TensorRT's name
        assert len(shape_inputs) == 0  # QDPs take no shape inputs
        SymIntExpr._exprBuilder = exprBuilder
        try:
            self.input_descs = []
            for dtype, dims in zip(self.input_types, inputs, strict=True):
                d = TensorDesc()
                d.dtype = dtype
                d.shape_expr = ShapeExprs(len(dims))
                for j, e in enumerate(dims):
                    d.shape_expr[j] = ShapeExpr(e)
                d._immutable = True
                self.input_descs.append(d)
            self.output_descs = self._call_register(self.input_descs)
            for i, d in enumerate(self.output_descs):
                if d.is_size_tensor:
                    d._set_index(i)
            return [trt.DimsExprs([e._expr for e in d.shape_expr]) for d in self.output_descs]
        finally:
            SymIntExpr._exprBuilder = None

    def configure_plugin(self, inputs, outputs):
        self.curr_comb = _TypeFormatCombination()
        self.curr_comb.types = [d.desc.type for d in list(inputs) + list(outputs)]
        self.curr_comb.layouts = [d.desc.format for d in list(inputs) + list(outputs)]

    def _set_concrete(self, in_out, num_inputs):
        for i, desc in enumerate(in_out):
            target = self.input_descs[i] if i < num_inputs else self.output_descs[i - num_inputs]
            target._immutable = False
            target.shape, target.dtype = Shape(desc), desc.desc.type
            target.format, target.scale = desc.desc.format, desc.desc.scale
            target._immutable = True

    def get_supported_format_combinations(self, in_out, num_inputs):
        if self.autotune_function is not None:
            self._set_concrete(in_out, num_inputs)
            val = [self.attrs[k] for k in self.autotune_attr_names]
            self.autotune_combs = self.autotune_function(*self.input_descs, *val, self.output_descs)
        if not self.autotune_combs:
            comb = _TypeFormatCombination(len(in_out))
            result = []
            for j in range(len(in_out)):
                d = trt.PluginTensorDesc()
                d.type = self.input_types[j] if j < num_inputs else self.output_descs[j - num_inputs].dtype
                d.format = trt.TensorFormat.LINEAR
                comb.types[j], comb.layouts[j] = d.type, d.format
                result.append(d)
            self.supported_combs = {comb: set()}
            return result
        self.supported_combs, result = {}, []
        for auto in self.autotune_combs:
            for comb in auto._get_combinations():
                tactics = set(comb.tactics) if comb.tactics is not None else set()
                if comb in self.supported_combs:
                    self.supported_combs[comb].update(tactics)
                    continue
                self.supported_combs[comb] = tactics
                for j in range(len(in_out)):
                    d = trt.PluginTensorDesc()
                    d.type, d.format = comb.types[j], comb.layouts[j]
                    result.append(d)
        return result

    def get_aliased_input(self, output_index: int):
        return self.aliased_map[output_index]

    def get_valid_tactics(self):
        tactics = self.supported_combs.get(self.curr_comb)
        assert tactics is not None
        return list(tactics)

    def set_tactic(self, tactic):
        self._tactic = tactic

    def get_fields_to_serialize(self):
        names = getattr(self, "impl_attr_names", None) or []
        return trt.PluginFieldCollection([field_for(k, v) for k, v in self.attrs.items() if k in names])


class _TemplateJITPlugin(_TemplatePluginBase, trt.IPluginV3QuickRuntime):
    """A plugin whose ``impl`` runs as a Python callback at execution time (never called by the fake)."""

    def init(self, register_function, attrs, impl_attr_names, impl_function, autotune_attr_names,
             autotune_function, expects_tactic):
        self.register_function, self.attrs = register_function, attrs
        self.impl_attr_names, self.impl_function = impl_attr_names, impl_function
        self.autotune_attr_names, self.autotune_function = autotune_attr_names, autotune_function
        self.expects_tactic = expects_tactic

    def get_capability_interface(self, type):
        return self


class _TemplateAOTPlugin(_TemplatePluginBase, trt.IPluginV3QuickAOTBuild):
    """A plugin whose ``aot_impl`` returns a compiled kernel that TensorRT embeds in the plan."""

    def init(self, register_function, attrs, aot_impl_attr_names, aot_impl_function, autotune_attr_names,
             autotune_function):
        self.register_function, self.attrs = register_function, attrs
        self.aot_impl_attr_names, self.aot_impl_function = aot_impl_attr_names, aot_impl_function
        self.autotune_attr_names, self.autotune_function = autotune_attr_names, autotune_function
        self.kernel_map = {}

    def get_capability_interface(self, type):
        return self

    def get_kernel(self, inputDesc, outputDesc):  # noqa: N803
        key = (tuple(d.type for d in list(inputDesc) + list(outputDesc)),
               tuple(d.format for d in list(inputDesc) + list(outputDesc)), self._tactic)
        assert key in self.kernel_map, f"key {key} not in kernel_map"
        name, ptx = self.kernel_map[key]
        return name, ptx.encode() if isinstance(ptx, str) else ptx

    def get_launch_params(self, inDimsExprs, in_out, num_inputs, launchParams, symExprSetter,  # noqa: N803
                          exprBuilder):
        SymIntExpr._exprBuilder = exprBuilder
        try:
            self._set_concrete(in_out, num_inputs)
            val = tuple(self.attrs.values())  # all attributes, positionally, as the wheel does
            name, ptx, launch, extra = self.aot_impl_function(*self.input_descs, *val, self.output_descs,
                                                              self._tactic)
            if not isinstance(name, (str, bytes)):
                raise TypeError(f"Kernel name must be a 'str' or 'bytes'.  Got: {type(name)}.")
            if not isinstance(ptx, (str, bytes)):
                raise TypeError(f"PTX/CUBIN must be a 'str' or 'bytes'.  Got: {type(ptx)}.")
            if not isinstance(launch, KernelLaunchParams):
                raise TypeError(f"Launch params must be a 'tensorrt.plugin.KernelLaunchParams'.  Got: "
                                f"{type(launch)}.")
            if not isinstance(extra, SymExprs):
                raise TypeError(f"Extra args must be a 'tensorrt.plugin.SymIntExprs'.  Got: {type(extra)}.")
            for field in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem"):
                setattr(launchParams, field, getattr(launch, field)())
            key = (tuple(d.desc.type for d in in_out), tuple(d.desc.format for d in in_out), self._tactic)
            self.kernel_map[key] = (name, ptx)
            symExprSetter.nbSymExprs = len(extra)
            for i, arg in enumerate(extra):
                if not isinstance(arg, SymInt32):
                    raise TypeError(f"Extra args must be a 'tensorrt.plugin.SymInt32'.  Got: {type(arg)}.")
                symExprSetter[i] = arg()
        finally:
            SymIntExpr._exprBuilder = None

    def get_timing_cache_id(self):
        return ""

