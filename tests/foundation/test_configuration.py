"""ConfigMixin: recording, frozen config, save/load, from_config across compatible classes (spec 1.6)."""
import copy
import json
import logging
import os
import pickle

import pytest

from diffblocks.configuration import ConfigMixin, FrozenDict, register_to_config


class Sample(ConfigMixin):
    config_name = "sample_config.json"

    @register_to_config
    def __init__(self, a=2, b=5, c=(2, 5), d="for diffusion", e=[1, 3]):
        self.real_attribute = "real"


class Ignoring(ConfigMixin):
    config_name = "ignoring_config.json"
    ignore_for_config = ["secret"]

    @register_to_config
    def __init__(self, a=1, secret=None):
        self.secret = secret


# a pair of "compatible" classes, like two schedulers sharing one folder
class Alpha(ConfigMixin):
    config_name = "pair_config.json"
    has_compatibles = True
    _compatibles = ["Beta"]

    @register_to_config
    def __init__(self, shared=1, alpha_only="a", common_default=10):
        pass


class Beta(ConfigMixin):
    config_name = "pair_config.json"
    has_compatibles = True
    _compatibles = ["Alpha"]

    @register_to_config
    def __init__(self, shared=1, beta_only="b", common_default=20):
        pass


@pytest.fixture
def pair_registry(monkeypatch):
    """Make Alpha/Beta visible to the compatible-class lookup, as library classes are."""
    import diffblocks

    monkeypatch.setattr(diffblocks, "Alpha", Alpha, raising=False)
    monkeypatch.setattr(diffblocks, "Beta", Beta, raising=False)


def test_records_every_argument_with_defaults():
    obj = Sample(a=3)
    assert obj.config["a"] == 3
    assert obj.config.b == 5
    assert obj.config["c"] == (2, 5)
    assert sorted(obj.config["_use_default_values"]) == ["b", "c", "d", "e"]


def test_positional_arguments_are_recorded_by_name():
    obj = Sample(7, 8)
    assert obj.config.a == 7 and obj.config.b == 8


def test_private_kwargs_stored_but_not_passed_to_init():
    obj = Sample(a=1, _name_or_path="somewhere")
    assert obj.config["_name_or_path"] == "somewhere"


def test_ignore_for_config_not_recorded():
    obj = Ignoring(a=4, secret=object())
    assert "secret" not in obj.config
    assert obj.config.a == 4
    assert obj.secret is not None


def test_register_to_config_requires_configmixin():
    class NotConfig:
        @register_to_config
        def __init__(self, a=1):
            pass

    with pytest.raises(RuntimeError, match="does not inherit from ConfigMixin"):
        NotConfig()


def test_config_is_frozen_and_copyable():
    obj = Sample()
    cfg = obj.config
    assert isinstance(cfg, FrozenDict)
    for action in (
        lambda: cfg.__setitem__("a", 1),
        lambda: setattr(cfg, "a", 1),
        lambda: cfg.pop("a"),
        lambda: cfg.update(a=1),
        lambda: cfg.setdefault("z", 1),
        lambda: cfg.__delitem__("a"),
    ):
        with pytest.raises(TypeError, match="cannot be modified"):
            action()
    assert cfg.a == 2
    editable = dict(cfg)
    editable["a"] = 9
    assert cfg.a == 2
    for clone in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert isinstance(clone, FrozenDict) and clone == cfg


def test_frozen_dict_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        FrozenDict(a=1).b


def test_deprecated_attribute_access_warns_only_for_config_keys(recwarn):
    obj = Sample()
    assert obj.real_attribute == "real"
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    with pytest.warns(FutureWarning, match="Accessing config attribute `a`"):
        assert obj.a == 2
    with pytest.raises(AttributeError):
        obj.does_not_exist


def test_deprecated_attribute_access_without_getattr_keeps_attributes_first(recwarn):
    """Config keys are reachable as attributes through class descriptors, not a ``__getattr__`` (which would cost
    CPython's specialised attribute loads); instance attributes and class attributes always win."""
    assert "__getattr__" not in vars(ConfigMixin)

    class Holder(ConfigMixin):
        config_name = "holder.json"
        speed = "class attribute"

        @register_to_config
        def __init__(self, speed=1, scale=2.0, label="x"):
            self.scale = scale * 10  # an attribute with a config key's name

    obj = Holder(scale=3.0)
    assert obj.scale == 30.0 and obj.speed == "class attribute"
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    assert "scale" not in vars(Holder)  # an instance attribute: no descriptor shadowing it
    with pytest.warns(FutureWarning, match="Accessing config attribute `label`"):
        assert obj.label == "x"
    assert not hasattr(Holder, "label")  # class access: no such attribute, as with __getattr__
    obj.register_to_config(added_later=5)  # keys added after construction are reachable too
    with pytest.warns(FutureWarning, match="added_later"):
        assert obj.added_later == 5
    with pytest.raises(AttributeError, match="added_later"):
        Holder().added_later  # another instance without that key
    obj.label = "own"  # an attribute set later wins over the config key
    assert obj.label == "own"


def test_pipeline_components_get_no_config_descriptors(tmp_path):
    import diffblocks

    sched = diffblocks.DDIMScheduler()
    pipe = diffblocks.DiffusionPipeline()
    pipe.register_modules(scheduler=sched)
    assert pipe.scheduler is sched and "scheduler" not in vars(type(pipe))


def test_save_and_load_round_trip(tmp_path):
    obj = Sample(a=[1, 2], d="x")
    obj.save_config(tmp_path)
    text = (tmp_path / "sample_config.json").read_text()
    data = json.loads(text)
    assert text.endswith("\n")
    assert list(data) == sorted(data)
    assert data["_class_name"] == "Sample"
    assert "_use_default_values" not in data
    assert data["c"] == [2, 5]  # tuples become lists
    loaded = Sample.load_config(tmp_path)
    assert loaded == data
    new = Sample.from_config(loaded)
    assert new.config.a == [1, 2] and new.config.d == "x"
    assert [f.name for f in tmp_path.iterdir()] == ["sample_config.json"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sample_config.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_config_subfolder_and_file(tmp_path):
    Sample(a=11).save_config(tmp_path / "sub")
    assert Sample.load_config(tmp_path, subfolder="sub")["a"] == 11
    assert Sample.load_config(tmp_path / "sub" / "sample_config.json")["a"] == 11


def test_load_config_errors(tmp_path):
    with pytest.raises(EnvironmentError, match="Error no file named sample_config.json found in directory"):
        Sample.load_config(tmp_path)
    bad = tmp_path / "sample_config.json"
    bad.write_text("{not json")
    with pytest.raises(EnvironmentError, match="is not a valid JSON file"):
        Sample.load_config(tmp_path)
    with pytest.raises(ValueError, match="config_name"):
        ConfigMixin.load_config(tmp_path)


def test_load_config_returns_unused_kwargs_and_commit_hash(tmp_path):
    snap = tmp_path / "models--org--name" / "snapshots" / ("a" * 40)
    Sample().save_config(snap)
    cfg, unused, commit = Sample.load_config(snap, return_unused_kwargs=True, return_commit_hash=True, foo=1)
    assert unused == {"foo": 1}
    assert commit == "a" * 40
    assert cfg["a"] == 2


def test_save_config_to_a_file_path_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(AssertionError, match="should be a directory, not a file"):
        Sample().save_config(target)


def test_from_config_requires_config():
    with pytest.raises(ValueError, match="provide a config"):
        Sample.from_config(None)


def test_from_config_kwargs_override_and_unused(caplog):
    cfg = dict(Sample(a=3).config)
    obj, unused = Sample.from_config(cfg, b=99, zzz=1, return_unused_kwargs=True)
    assert obj.config.a == 3 and obj.config.b == 99
    assert unused["zzz"] == 1


def test_unknown_keys_warn_with_exact_text(caplog):
    cfg = {"a": 1, "unknown_key": 3, "_class_name": "Sample"}
    with caplog.at_level(logging.INFO, logger="diffblocks.configuration"):
        obj = Sample.from_config(cfg)
    assert obj.config.a == 1
    assert (
        "The config attributes {'unknown_key': 3} were passed to Sample, but are not expected and will be ignored. "
        "Please verify your sample_config.json configuration file." in caplog.text
    )
    assert "was not found in config. Values will be initialized to default values." in caplog.text
    assert obj.config["unknown_key"] == 3  # kept hidden, like diffusers


def test_bad_class_name_type_raises():
    with pytest.raises(ValueError, match="_class_name"):
        Sample.extract_init_dict({"_class_name": 3})


def test_default_values_of_new_class_win_over_recorded_defaults(pair_registry):
    a = Alpha()  # common_default=10 was a default, not a choice
    b = Beta.from_config(a.config)
    assert b.config.common_default == 20
    a2 = Alpha(common_default=10)  # an explicit choice is carried over
    assert Beta.from_config(a2.config).config.common_default == 10


def test_compatible_switch_round_trip_restores_config(pair_registry, caplog, tmp_path):
    a = Alpha(shared=3, alpha_only="x", common_default=11)
    a.save_config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="diffblocks.configuration"):
        b = Beta.from_config(Beta.load_config(tmp_path))
    assert "were passed to" not in caplog.text  # compatible keys are dropped silently
    assert b.config.shared == 3 and b.config.beta_only == "b"
    assert b.config["alpha_only"] == "x"  # hidden
    assert b.config["_class_name"] == "Beta"
    back = Alpha.from_config(b.config)
    assert back.config.alpha_only == "x"
    back.save_config(tmp_path / "back")
    original = json.loads((tmp_path / "pair_config.json").read_text())
    restored = json.loads((tmp_path / "back" / "pair_config.json").read_text())
    assert restored == original  # beta_only was a default of the detour class, so it is not carried back


def test_to_json_string_writes_diffusers_format_version():
    data = json.loads(Sample().to_json_string())
    from packaging import version

    assert version.parse(data["_diffusers_version"]) >= version.parse("0.30.0")


def test_diffusers_parity_of_config_files(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffblocks.configuration import ConfigMixin as OurMixin

    class Theirs(diffusers.ConfigMixin):
        config_name = "config.json"

        @diffusers.configuration_utils.register_to_config
        def __init__(self, a=1, b=(1, 2), c="z"):
            pass

    class Ours(OurMixin):
        config_name = "config.json"

        @register_to_config
        def __init__(self, a=1, b=(1, 2), c="z"):
            pass

    Theirs(a=5, b=(3, 4)).save_config(tmp_path / "theirs")
    Ours(a=5, b=(3, 4)).save_config(tmp_path / "ours")
    theirs_file = json.loads((tmp_path / "theirs" / "config.json").read_text())
    ours_file = json.loads((tmp_path / "ours" / "config.json").read_text())
    drop = lambda d: {k: v for k, v in d.items() if k not in ("_class_name", "_diffusers_version")}
    assert drop(theirs_file) == drop(ours_file)
    assert Ours.load_config(tmp_path / "theirs") == theirs_file
    assert dict(Ours.from_config(Ours.load_config(tmp_path / "theirs")).config)["b"] == [3, 4]
    their_obj = Theirs.from_config(Theirs.load_config(tmp_path / "ours"))
    assert their_obj.config.a == 5
