"""Blocks: state exchange rules, the seed loop examples, composition, conditionals, workflows, docs."""
import logging
import warnings

import pytest
import torch

from diffblocks.modular_pipelines import (
    AutoPipelineBlocks,
    ConditionalPipelineBlocks,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    PipelineState,
    SequentialPipelineBlocks,
)
from diffblocks.modular_pipelines.modular_pipeline import PipelineBlock

from .helpers import (
    AddBlock,
    AutoImageBlocks,
    DoubleBlock,
    ImageConditional,
    ImageToImageBlock,
    InpaintBlock,
    LoopAdd,
    ModelBlock,
    TextBlock,
    TextToImageBlock,
    TinyLoopWrapper,
)


# --------------------------------------------------------------------------------------------------------------------
# the seed document, as written (imports changed)
# --------------------------------------------------------------------------------------------------------------------


class LoopWrapper(LoopSequentialPipelineBlocks):
    model_name = "test"

    @property
    def description(self):
        return "I'm a loop!!"

    @property
    def loop_inputs(self):
        return [InputParam(name="num_steps")]

    @torch.no_grad()
    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        # Loop structure - can be customized to your needs
        for i in range(block_state.num_steps):
            # loop_step executes all registered blocks in sequence
            components, block_state = self.loop_step(components, block_state, i=i)
        self.set_block_state(state, block_state)
        return components, state


class LoopBlock(ModularPipelineBlocks):
    model_name = "test"

    @property
    def inputs(self):
        return [InputParam(name="x")]

    @property
    def intermediate_outputs(self):
        # outputs produced by this block
        return [OutputParam(name="x")]

    @property
    def description(self):
        return "I'm a block used inside the `LoopWrapper` class"

    def __call__(self, components, block_state, i: int):
        block_state.x += 1
        return components, block_state


def test_seed_loop_one_block():
    loop = LoopWrapper.from_blocks_dict({"block1": LoopBlock})
    assert isinstance(loop.sub_blocks["block1"], LoopBlock)
    pipe = loop.init_pipeline()
    assert pipe(num_steps=5, x=3, output="x") == 3 + 5


def test_seed_loop_two_blocks_class_and_instance():
    loop = LoopWrapper.from_blocks_dict({"block1": LoopBlock(), "block2": LoopBlock})
    assert [type(b) for b in loop.sub_blocks.values()] == [LoopBlock, LoopBlock]
    assert loop.input_names == ["num_steps", "x"]
    assert loop.intermediate_output_names == ["x"]
    pipe = loop.init_pipeline()
    assert pipe(num_steps=4, x=10, output="x") == 10 + 2 * 4
    # a tensor input updated in place by `+=` inside the loop: the user's tensor is untouched
    x = torch.zeros(3)
    out = pipe(num_steps=4, x=x, output="x")
    assert out.tolist() == [8.0, 8.0, 8.0]
    assert x.tolist() == [0.0, 0.0, 0.0]


def test_seed_loop_block_state_is_shared_across_sub_blocks():
    seen = []

    class Recorder(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("x")]

        def __call__(self, components, block_state, i):
            seen.append((i, block_state.x, id(block_state)))
            return components, block_state

    loop = LoopWrapper.from_blocks_dict({"add": LoopBlock, "rec": Recorder})
    loop.init_pipeline()(num_steps=2, x=0)
    assert [(i, x) for i, x, _ in seen] == [(0, 1), (1, 2)]
    assert len({bid for _, _, bid in seen}) == 1


def test_loop_wrapper_requirements_and_errors():
    with pytest.raises(ValueError, match=r"sub_blocks must be leaf blocks \(no sub_blocks\). Block 'inner'"):
        LoopWrapper.from_blocks_dict({"inner": SequentialPipelineBlocks.from_blocks_dict({"a": AddBlock})})

    class BadLoop(LoopSequentialPipelineBlocks):
        block_classes = [SequentialPipelineBlocks.from_blocks_dict({"a": AddBlock})]
        block_names = ["a"]

        @property
        def description(self):
            return "bad"

    with pytest.raises(ValueError, match="In BadLoop, sub_blocks must be leaf blocks"):
        BadLoop()

    class NoCall(LoopSequentialPipelineBlocks):
        pass

    loop = NoCall.from_blocks_dict({"a": LoopAdd})
    with pytest.raises(NotImplementedError, match="`__call__` method needs to be implemented by the subclass"):
        loop(None, PipelineState())
    with pytest.raises(NotImplementedError, match="`description` needs to be implemented"):
        loop.description
    # the repr still renders
    assert "NoCall(" in repr(loop)


def test_loop_declarations_aggregate():
    class Wrapper(LoopSequentialPipelineBlocks):
        @property
        def description(self):
            return "w"

        @property
        def loop_inputs(self):
            return [InputParam("num_steps", required=True)]

        @property
        def loop_intermediate_inputs(self):  # seed-era spelling
            return [InputParam("timesteps", required=True)]

        @property
        def loop_intermediate_outputs(self):
            return [OutputParam("num_warmup")]

    class A(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("latents", required=True), InputParam("t")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("noise_pred")]

    class B(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("noise_pred", required=True), InputParam("latents")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("latents")]

    loop = Wrapper.from_blocks_dict({"a": A, "b": B})
    assert loop.input_names == ["num_steps", "timesteps", "latents", "t"]
    assert loop.required_inputs == ["num_steps", "timesteps", "latents", "noise_pred"]
    assert [p.required for p in loop.inputs] == [True, True, True, False]
    assert loop.intermediate_output_names == ["noise_pred", "latents", "num_warmup"]
    assert loop.output_names == ["latents"]


def test_loop_progress_bar_honours_config(capsys):
    loop = TinyLoopWrapper.from_blocks_dict({"add": LoopAdd})
    pipe = loop.init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert pipe(x=0, num_steps=3, output="x") == 3
    assert "3/3" not in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=False, desc="denoising")
    pipe(x=0, num_steps=3)
    err = capsys.readouterr().err
    assert "denoising" in err and "3/3" in err
    with pytest.raises(ValueError, match="Either `total` or `iterable` has to be defined."):
        loop.progress_bar()


def test_progress_bar_config_reaches_nested_loops():
    seq = SequentialPipelineBlocks.from_blocks_dict(
        {"outer": SequentialPipelineBlocks.from_blocks_dict({"loop": TinyLoopWrapper.from_blocks_dict({"a": LoopAdd})})}
    )
    pipe = seq.init_pipeline()
    pipe.set_progress_bar_config(disable=True, leave=False)
    inner = pipe._blocks.sub_blocks["outer"].sub_blocks["loop"]
    assert inner._progress_bar_config == {"disable": True, "leave": False}


# --------------------------------------------------------------------------------------------------------------------
# get_block_state / set_block_state
# --------------------------------------------------------------------------------------------------------------------


class Reader(ModularPipelineBlocks):
    @property
    def inputs(self):
        return [InputParam("a", required=True), InputParam("b", default=[1, 2]), InputParam("c"),
                InputParam(kwargs_type="grp")]

    @property
    def intermediate_outputs(self):
        return [OutputParam("out", kwargs_type="grp2")]


def test_get_block_state_defaults_required_and_groups():
    block = Reader()
    state = PipelineState()
    with pytest.raises(ValueError, match="Required input 'a' is missing"):
        block.get_block_state(state)
    state.set_input("a", None)  # passing None counts as missing
    with pytest.raises(ValueError, match="Required input 'a' is missing"):
        block.get_block_state(state)
    state.set_input("a", "A")
    state.set_input("g1", "x", kwargs_type="grp")
    state.set_intermediate("g2", "y", kwargs_type="grp")
    state.set_intermediate("g3", None, kwargs_type="grp")
    bs = block.get_block_state(state)
    assert bs.a == "A" and bs.b == [1, 2] and bs.c is None
    assert bs.grp == {"g1": "x", "g2": "y"}
    assert bs.g1 == "x" and bs.g2 == "y" and not hasattr(bs, "g3")
    # the default object is a private copy: mutating it cannot corrupt later runs
    bs.b.append(3)
    assert block.get_block_state(state).b == [1, 2]


def test_set_block_state_rules():
    block = Reader()
    state = PipelineState()
    user_list = ["u"]
    state.set_input("a", user_list)
    state.set_input("c", "C")
    state.set_intermediate("g", "G", kwargs_type="grp")
    bs = block.get_block_state(state)
    with pytest.raises(ValueError, match="Intermediate output 'out' is missing in block state"):
        block.set_block_state(state, bs)
    bs.out = 1
    block.set_block_state(state, bs)
    # output always written, with its tag; untouched inputs not rewritten; defaulted input written back
    assert state.intermediates == {"g": "G", "out": 1, "b": [1, 2]}
    assert state.kwargs_mapping["grp2"] == ["out"]
    # modifying a user list in place: written back as an intermediate, user's list untouched
    bs = block.get_block_state(state)
    bs.a.append("v")
    bs.c = "C2"  # reassigned input
    bs.g = "G2"  # reassigned group value
    bs.out = 2
    block.set_block_state(state, bs)
    assert user_list == ["u"] and state.inputs["a"] == ["u"]
    assert state.get("a") == ["u", "v"]
    assert state.get("c") == "C2" and state.inputs["c"] == "C"
    assert state.get("g") == "G2"


def test_user_inputs_never_mutated_by_blocks():
    class Mutator(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("t"), InputParam("d"), InputParam("lst")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("done")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.t.mul_(10)
            bs.d["k"] = "changed"
            bs.lst.append(99)
            bs.done = True
            self.set_block_state(state, bs)
            return components, state

    class Consumer(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("t"), InputParam("d"), InputParam("lst")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("seen")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.seen = (bs.t.tolist(), dict(bs.d), list(bs.lst))
            self.set_block_state(state, bs)
            return components, state

    pipe = SequentialPipelineBlocks.from_blocks_dict({"m": Mutator, "c": Consumer}).init_pipeline()
    t, d, lst = torch.ones(2), {"k": "orig"}, [1]
    state = pipe(t=t, d=d, lst=lst)
    # later blocks see the changes (they are intermediates) ...
    assert state.get("seen") == ([10.0, 10.0], {"k": "changed"}, [1, 99])
    # ... the user's objects and the state's inputs layer do not
    assert t.tolist() == [1.0, 1.0] and d == {"k": "orig"} and lst == [1]
    assert state.inputs["t"].tolist() == [1.0, 1.0] and state.inputs["d"] == {"k": "orig"}


def test_read_only_block_does_not_write_back():
    class ReadOnly(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("t"), InputParam("n")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("s")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.s = float(bs.t.sum()) + bs.n
            self.set_block_state(state, bs)
            return components, state

    state = ReadOnly().init_pipeline()(t=torch.ones(3), n=1)
    assert state.intermediates == {"s": 4.0}
    assert set(state.values) == {"t", "n", "s"}


def test_seed_era_intermediate_inputs():
    class OldStyle(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("prompt", required=True)]

        @property
        def intermediate_inputs(self):
            return [InputParam("x", required=True), InputParam("prompt")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("result")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.result = f"{bs.prompt}:{bs.x}"
            self.set_block_state(state, bs)
            return components, state

    seq = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock, "old": OldStyle})
    assert seq.input_names == ["x", "amount", "prompt"]  # x is produced by `add`
    assert OldStyle().input_names == ["prompt", "x"]
    assert seq.init_pipeline()(x=1, prompt="p", output="result") == "p:2"
    with pytest.raises(ValueError, match="Required input 'x' is missing"):
        OldStyle().init_pipeline()(prompt="p")


def test_kwargs_type_flow():
    class Producer(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("a"), InputParam("b")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("a", kwargs_type="typea"), OutputParam("b")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.a, bs.b = f"{bs.a}-producer", f"{bs.b}-producer"
            self.set_block_state(state, bs)
            return components, state

    class Consumer(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam(kwargs_type="typea"), InputParam("b")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("received_typea"), OutputParam("received_a"), OutputParam("received_b")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.received_typea = bs.typea
            bs.received_a = getattr(bs, "a", None)
            bs.received_b = bs.b
            self.set_block_state(state, bs)
            return components, state

    pipe = SequentialPipelineBlocks.from_blocks_dict({"producer": Producer, "consumer": Consumer}).init_pipeline()
    out = pipe(a="testa", b="testb", output=["received_typea", "received_a", "received_b"])
    assert out == {"received_typea": {"a": "testa-producer"}, "received_a": "testa-producer",
                   "received_b": "testb-producer"}
    alone = Consumer().init_pipeline()
    assert [p.name for p in alone.blocks.inputs if p.name] == ["b"]
    assert [p.kwargs_type for p in alone.blocks.inputs if p.name is None] == ["typea"]
    assert "**typea" in alone.blocks.doc
    with pytest.warns(UserWarning, match="Unexpected input 'a' provided"):
        out = alone(a="testa", b="testb", output=["received_typea", "received_a", "received_b"])
    assert out == {"received_typea": {}, "received_a": None, "received_b": "testb"}
    out = alone(typea={"a": "testa"}, output=["received_typea", "received_a", "received_b"])
    assert out == {"received_typea": {"a": "testa"}, "received_a": "testa", "received_b": None}


# --------------------------------------------------------------------------------------------------------------------
# sequential composition
# --------------------------------------------------------------------------------------------------------------------


def test_sequential_aggregation_and_editing():
    seq = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock, "double": DoubleBlock, "text": TextBlock})
    assert seq.input_names == ["x", "amount", "prompt"]
    assert seq.required_inputs == ["x", "prompt"]
    assert seq.intermediate_output_names == ["x", "y", "prompt_len"]
    assert seq.component_names == ["text_model"]
    assert seq.model_name == "tiny"
    pipe = seq.init_pipeline()
    assert pipe(x=2, amount=3, prompt="abc", output=["x", "y", "prompt_len"]) == {"x": 5, "y": 10, "prompt_len": 3}
    # popping a block changes the pipeline's inputs immediately
    text = seq.sub_blocks.pop("text")
    assert isinstance(text, TextBlock) and "prompt" not in seq.input_names
    assert "prompt" in pipe.blocks.input_names  # the pipeline holds its own copy
    assert "prompt" not in seq.init_pipeline().blocks.input_names
    # the popped block runs on its own
    assert text.init_pipeline()(prompt="hello", output="prompt_len") == 5
    # insert at a position / replace in place
    seq.sub_blocks.insert("text", TextBlock(), 0)
    assert list(seq.sub_blocks) == ["text", "add", "double"]
    seq.sub_blocks["add"] = DoubleBlock()
    assert list(seq.sub_blocks) == ["text", "add", "double"]
    assert seq.intermediate_output_names == ["prompt_len", "y"]


def test_sequential_class_declaration_and_length_error():
    class Pipe(SequentialPipelineBlocks):
        block_classes = [AddBlock, DoubleBlock()]
        block_names = ["add", "double"]

    p = Pipe()
    assert [type(b) for b in p.sub_blocks.values()] == [AddBlock, DoubleBlock]
    assert Pipe().sub_blocks["add"] is not p.sub_blocks["add"]

    class Bad(SequentialPipelineBlocks):
        block_classes = [AddBlock]
        block_names = ["add", "double"]

    with pytest.raises(ValueError, match="In Bad, the number of block_names and block_classes must be the same"):
        Bad()


def test_from_blocks_dict_description_and_validation():
    seq = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock}, description="My pipeline")
    assert seq.description == "My pipeline"
    assert "Description: My pipeline" in repr(seq)
    with pytest.raises(TypeError, match="`blocks_dict` must be a dict"):
        SequentialPipelineBlocks.from_blocks_dict([AddBlock])


def test_sequential_error_propagates_with_block_name(caplog):
    class Boom(ModularPipelineBlocks):
        def __call__(self, components, state):
            raise RuntimeError("boom")

    pipe = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock, "boom": Boom}).init_pipeline()
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="boom") as info:
        pipe(x=1)
    assert "Error in block: (boom, Boom)" in caplog.text
    if hasattr(info.value, "__notes__"):
        assert any("'boom' (Boom)" in n for n in info.value.__notes__)


def test_pipeline_input_defaults_seeded_and_first_declaration_wins():
    class Other(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("amount", default=100), InputParam("z", default="zz")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("w")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.w = (bs.amount, bs.z)
            self.set_block_state(state, bs)
            return components, state

    seq = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock, "other": Other})
    amount = [p for p in seq.inputs if p.name == "amount"]
    assert len(amount) == 1 and amount[0].default == 1
    state = seq.init_pipeline()(x=0)
    assert dict(state.inputs) == {"x": 0, "amount": 1, "z": "zz"}
    assert state.get("w") == (1, "zz")


def test_leaf_block_basics():
    block = AddBlock()
    assert block.sub_blocks == {} and PipelineBlock is ModularPipelineBlocks
    assert block.required_inputs == ["x"]
    assert repr(block).startswith('AddBlock {\n  "_class_name": "AddBlock"')
    for call in (lambda: block.get_execution_blocks(), lambda: block.available_workflows,
                 lambda: block.get_workflow("x")):
        with pytest.raises(NotImplementedError, match="not implemented for AddBlock"):
            call()
    assert ModularPipelineBlocks().description == ""


# --------------------------------------------------------------------------------------------------------------------
# conditional / auto blocks
# --------------------------------------------------------------------------------------------------------------------


def test_conditional_select_and_execution_blocks():
    blocks = ImageConditional()
    assert set(blocks.sub_blocks) == {"inpaint", "img2img", "text2img"}
    assert blocks.select_block(mask="m", image="i") == "inpaint"
    assert blocks.select_block(image="i") == "img2img"
    assert blocks.select_block() is None and blocks.select_block(mask=None, image=None) is None
    assert isinstance(blocks.get_execution_blocks(), TextToImageBlock)
    assert isinstance(blocks.get_execution_blocks(mask=True), InpaintBlock)
    assert isinstance(blocks.get_execution_blocks(image=True), ImageToImageBlock)
    assert isinstance(blocks.get_execution_blocks("image"), ImageToImageBlock)
    assert isinstance(blocks.get_execution_blocks(mask=True, image=True), InpaintBlock)
    assert blocks.description == "Picks inpaint / img2img / text2img"
    assert blocks.trigger_inputs == ["image", "mask"]

    class Skippable(ImageConditional):
        default_block_name = None

    assert Skippable().get_execution_blocks() is None
    assert isinstance(Skippable().get_execution_blocks(image=True), ImageToImageBlock)


def test_auto_blocks_priority_and_skip():
    blocks = AutoImageBlocks()
    assert blocks.default_block_name is None
    assert blocks.select_block() is None
    assert blocks.select_block(mask=1, image=1) == "inpaint"
    assert blocks.get_execution_blocks() is None
    assert isinstance(blocks.get_execution_blocks(image=True), ImageToImageBlock)
    assert blocks.required_inputs == []  # skippable: nothing required at this level

    class WithDefault(AutoPipelineBlocks):
        block_classes = [InpaintBlock, TextToImageBlock, ImageToImageBlock]
        block_names = ["inpaint", "text2img", "img2img"]
        block_trigger_inputs = ["mask", None, "image"]

    wd = WithDefault()
    assert wd.default_block_name == "text2img"
    assert isinstance(wd.get_execution_blocks(), TextToImageBlock)
    assert isinstance(wd.get_execution_blocks(image=True), ImageToImageBlock)
    assert wd.required_inputs == ["prompt"]


def test_conditional_definition_errors():
    class Mismatch(ConditionalPipelineBlocks):
        block_classes = [InpaintBlock]
        block_names = ["a", "b"]

    with pytest.raises(ValueError, match="In Mismatch, the number of block_classes and block_names must be the same"):
        Mismatch()

    class BadDefault(ConditionalPipelineBlocks):
        block_classes = [InpaintBlock]
        block_names = ["a"]
        default_block_name = "zzz"

    with pytest.raises(ValueError, match=r"default_block_name 'zzz' must be one of block_names: \['a'\]"):
        BadDefault()

    class AutoWithDefault(AutoPipelineBlocks):
        block_classes = [InpaintBlock]
        block_names = ["a"]
        block_trigger_inputs = [None]
        default_block_name = "a"

    with pytest.raises(ValueError, match="do not set `default_block_name` for AutoPipelineBlocks"):
        AutoWithDefault()

    class AutoTriggers(AutoPipelineBlocks):
        block_classes = [InpaintBlock, TextToImageBlock]
        block_names = ["a", "b"]
        block_trigger_inputs = ["mask"]

    with pytest.raises(ValueError, match="the number of block_classes, block_names, and block_trigger_inputs"):
        AutoTriggers()

    class NoSelect(ConditionalPipelineBlocks):
        block_classes = [InpaintBlock]
        block_names = ["a"]

    with pytest.raises(NotImplementedError, match="`select_block` method needs to be implemented"):
        NoSelect().init_pipeline()(prompt="p")


def test_branch_defaults_merged_and_applied_at_run_time():
    blocks = AutoImageBlocks()
    strength = [p for p in blocks.inputs if p.name == "strength"]
    assert strength == [InputParam("strength", type_hint=float, default=None,
                                   defaults_by_block={"inpaint": 0.9999, "img2img": 0.3})]
    assert "strength (`float`, *optional*, defaults to 0.9999 or 0.3, depending on the workflow):" in " ".join(
        blocks.doc.split())
    # branch-only requirements become optional at this level
    assert [p.name for p in blocks.inputs if p.required] == []
    pipe = blocks.init_pipeline()
    state = pipe(prompt="p", image="img")
    assert state.get("workflow") == "img2img" and state.get("strength") == 0.3
    state = pipe(prompt="p", image="img", mask="m")
    assert state.get("workflow") == "inpaint" and state.get("strength") == 0.9999
    assert pipe(prompt="p", image="img", strength=0.7, output="strength") == 0.7
    # skipped: state untouched
    state = pipe(prompt="p")
    assert state.get("workflow") is None and "workflow" not in state.intermediates
    assert ImageToImageBlock().init_pipeline()(prompt="p", image="i", output="strength") == 0.3


def test_nested_conditional_defaults():
    class Nested(ConditionalPipelineBlocks):
        block_classes = [InpaintBlock, AutoImageBlocks]
        block_names = ["refine", "image"]
        block_trigger_inputs = ["refine_flag"]
        default_block_name = "image"

        def select_block(self, refine_flag=None):
            return "refine" if refine_flag is not None else None

    (strength,) = [p for p in Nested().inputs if p.name == "strength"]
    assert strength.defaults_by_block == {"refine": 0.9999, "image.inpaint": 0.9999, "image.img2img": 0.3}
    assert "defaults to 0.9999 or 0.3, depending on the workflow" in " ".join(Nested().doc.split())
    assert isinstance(Nested().get_execution_blocks(image=True), ImageToImageBlock)


def test_sequential_treats_skippable_outputs_as_not_produced():
    class NeedsWorkflow(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("workflow")]

        def __call__(self, components, state):
            return components, state

    seq = SequentialPipelineBlocks.from_blocks_dict({"auto": AutoImageBlocks, "after": NeedsWorkflow})
    assert "workflow" in seq.input_names
    seq2 = SequentialPipelineBlocks.from_blocks_dict({"cond": ImageConditional, "after": NeedsWorkflow})
    assert "workflow" not in seq2.input_names


# --------------------------------------------------------------------------------------------------------------------
# workflows, repr, doc
# --------------------------------------------------------------------------------------------------------------------


class WorkflowBlocks(SequentialPipelineBlocks):
    block_classes = [AddBlock, ImageConditional, TinyLoopWrapper.from_blocks_dict({"a": LoopAdd})]
    block_names = ["add", "image", "loop"]
    _workflow_map = {"text2img": {}, "img2img": {"image": True}, "inpaint": ({"mask": True}, {"mask": True, "image": True})}

    @property
    def description(self):
        return "Workflow blocks"


def test_workflows_and_execution_blocks():
    blocks = WorkflowBlocks()
    assert blocks.available_workflows == ["text2img", "img2img", "inpaint"]
    wf = blocks.get_workflow("img2img")
    assert type(wf) is SequentialPipelineBlocks
    assert list(wf.sub_blocks) == ["add", "image", "loop"]
    assert isinstance(wf.sub_blocks["image"], ImageToImageBlock)
    assert wf.sub_blocks["add"] is blocks.sub_blocks["add"]
    assert isinstance(blocks.get_workflow("inpaint").sub_blocks["image"], InpaintBlock)
    with pytest.raises(ValueError, match=r"Workflow 'nope' not found in WorkflowBlocks. Available workflows"):
        blocks.get_workflow("nope")
    plain = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock})
    with pytest.raises(NotImplementedError, match="_workflow_map is not set for SequentialPipelineBlocks"):
        plain.available_workflows
    # nested sequential blocks get dotted names; outputs of earlier blocks act as triggers
    class MakesImage(ModularPipelineBlocks):
        @property
        def intermediate_outputs(self):
            return [OutputParam("image")]

    nested = SequentialPipelineBlocks.from_blocks_dict({
        "pre": SequentialPipelineBlocks.from_blocks_dict({"make": MakesImage, "add": AddBlock}),
        "image": ImageConditional,
    })
    flat = nested.get_execution_blocks()
    assert list(flat.sub_blocks) == ["pre.make", "pre.add", "image"]
    assert isinstance(flat.sub_blocks["image"], ImageToImageBlock)


def test_composite_repr_and_doc():
    blocks = WorkflowBlocks()
    text = repr(blocks)
    lines = text.splitlines()
    assert lines[0] == "WorkflowBlocks(" and lines[1] == "  Class: SequentialPipelineBlocks"
    assert "  Description: Workflow blocks" in lines
    assert "      Supported workflows:" in lines
    assert "        - `img2img`: requires `image`" in lines
    assert "        - `text2img`: default (no additional inputs required)" in lines
    assert "  Sub-Blocks:" in lines and "    [1] image (ImageConditional)" in lines
    assert "       Description: Picks inpaint / img2img / text2img" in lines
    assert lines[-1] == ")"
    cond = repr(ImageConditional())
    assert "  Trigger Inputs: ['image', 'mask']" in cond
    assert "    • text2img [default] (TextToImageBlock)" in cond
    seq = SequentialPipelineBlocks.from_blocks_dict({"img": ImageConditional, "m": ModelBlock})
    text = repr(seq)
    assert "This pipeline contains blocks that are selected at runtime based on inputs." in text
    assert "get_execution_blocks(image=...)" in text
    assert "  Components:\n      model (`TinyModel`): the tiny model\n      scheduler (`TinyScheduler`)" in text
    assert "  Configs:\n      factor (default: 2.0)" in text
    doc = seq.doc
    assert doc.startswith("class SequentialPipelineBlocks\n\n")
    assert "      sample (`Tensor`):\n" in doc
    assert "  Outputs:\n      workflow (`str`):" in doc
