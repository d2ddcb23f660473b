"""The public execution plan (fcn_repro.caffe.plan): typed steps, blob versions, liveness, fusion."""
import torch

from fcn_repro.caffe import Net
from fcn_repro.caffe.plan import BlobRef, CropSumStep, DeconvCropStep, LayerStep, Plan
from test_net import CHAIN, SKIP, relu


def test_steps_are_typed_with_blob_versions_and_liveness():
    net = Net(CHAIN)
    plan = net.plan
    assert isinstance(plan, Plan) and plan.inputs == ["data"] and plan.outputs == ["conv3"]
    assert all(isinstance(s, LayerStep) for s in plan)
    assert [s.name for s in plan] == ["conv1", "relu1", "conv2", "relu2", "conv3"]
    relu1 = plan[1]
    # the in-place ReLU reads conv1's first value and writes its second
    assert relu1.bottoms == (BlobRef("conv1", 0),) and relu1.tops == (BlobRef("conv1", 1),)
    assert relu1.inplace_ok and not plan[0].inplace_ok
    assert plan[2].bottoms == (BlobRef("conv1", 1),)
    # each blob is dropped after its last reader; the output never
    assert plan[0].drop == ["data"] and plan[2].drop == ["conv1"] and plan[4].drop == ["conv2"]
    assert all("conv3" not in s.drop for s in plan)
    net.keep_blobs = True
    assert all(not s.drop and not s.inplace_ok for s in net.plan)


def test_fused_steps_and_their_bottoms():
    net = Net(SKIP.replace("BOTTOM0", "skipc").replace("BOTTOM1", "up"), seed=0)
    steps = list(net.plan)
    cs = next(s for s in steps if isinstance(s, CropSumStep))
    dc = next(s for s in steps if isinstance(s, DeconvCropStep))
    assert cs.crop.name == "skipc" and cs.eltwise.name == "fuse" and cs.position == 0
    assert cs.bottom_names == ["up", "score_skip", "up"] and cs.top_names == ["fuse"]
    assert dc.deconv.name == "up2" and dc.crop.name == "score" and dc.bottom_names == ["fuse", "data"]
    # a step is run on an environment by name; the fused steps equal the unfused layers
    x = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    net.double()
    env = {"data": x}
    for s in net.plan:
        s.apply(env)
    net.fuse = False
    torch.testing.assert_close(env["score"], net(data=x)["score"], rtol=1e-13, atol=1e-13)


def test_an_extra_reader_blocks_fusion_and_inplace():
    text = SKIP.replace("BOTTOM0", "up").replace("BOTTOM1", "skipc") + relu("peek", "skipc", "p")
    assert not any(isinstance(s, (CropSumStep, DeconvCropStep)) and s.crop.name == "skipc" for s in Net(text).plan)
    text = CHAIN + relu("peek", "conv3", "p") + relu("relu3", "conv3")
    steps = {s.name: s for s in Net(text).plan}
    # conv3@0 has two readers: the in-place ReLU may not overwrite it
    assert not steps["relu3"].inplace_ok and steps["relu3"].bottoms == (BlobRef("conv3", 0),)
    assert steps["relu2"].inplace_ok
