"""Architectures: the bodies a job can train, and whether the fleet holds ImageNet weights for each (on this server, or
in the fleet's weights store, which workers fetch them from)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ProjectDep, StateDep
from api.schemas import ArchitecturePublic, ArchitecturesPublic
from api.services.weights import imagenet_available, wt103_available
from core.engine.architectures import ARCHITECTURES
from core.jobs.spec import DEFAULT_ARCH

router = APIRouter(prefix="/architectures", tags=["architectures"])


@router.get("")
def list_architectures(state: StateDep, _: ProjectDep) -> ArchitecturesPublic:
    """Each architecture, whether `pretrained: "imagenet"` works with it on this fleet, and which one is the default;
    and whether fastai's WikiText-103 language model is in the fleet's weights store."""
    weights = imagenet_available(state)
    data = [
        ArchitecturePublic(
            name=a.name,
            imagenet_weights=weights[a.name],
            default=a.name == DEFAULT_ARCH,
            layer_groups=len(a.split_at) + 2,
        )
        for a in ARCHITECTURES.values()
    ]
    return ArchitecturesPublic(data=data, count=len(data), wt103_weights=wt103_available(state))
