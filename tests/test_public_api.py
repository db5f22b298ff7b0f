import tpsnet_plugin


def test_public_api_is_importable_and_versioned():
    assert tpsnet_plugin.__version__
    for name in tpsnet_plugin.__all__:
        assert getattr(tpsnet_plugin, name) is not None, name
