"""Test helpers: split a one-model ensemble into separately built members."""

import torch

from ce_ray.theory.models import CollegialBottleneck, CollegialMLP


def mlp_members(ensemble: CollegialMLP) -> list[CollegialMLP]:
    """The m members of ``ensemble`` as separately built MLPs sharing its weight values."""
    m, widths = ensemble.multiplicity, ensemble.widths
    members = []
    for j in range(m):
        member = CollegialMLP(ensemble.in_features, widths, ensemble.out_features, 1)
        member = member.to(ensemble.input_weight.dtype)
        with torch.no_grad():
            member.input_weight.copy_(ensemble.input_weight.view(m, widths[0], -1)[j])
            for mine, theirs in zip(member.hidden_weights, ensemble.hidden_weights, strict=True):
                mine.copy_(theirs[j : j + 1])
            readout = ensemble.readout_weight.view(ensemble.out_features, m, widths[-1])
            member.readout_weight.copy_(readout[:, j])
        members.append(member)
    return members


def bottleneck_members(ensemble: CollegialBottleneck) -> list[CollegialBottleneck]:
    m, n = ensemble.multiplicity, ensemble.width
    members = []
    for j in range(m):
        member = CollegialBottleneck(ensemble.in_channels, n, ensemble.out_channels, 1)
        member = member.to(ensemble.conv1_weight.dtype)
        with torch.no_grad():
            member.conv1_weight.copy_(ensemble.conv1_weight[j * n : (j + 1) * n])
            member.conv2_weight.copy_(ensemble.conv2_weight[j * n : (j + 1) * n])
            member.conv3_weight.copy_(ensemble.conv3_weight[:, j * n : (j + 1) * n])
        members.append(member)
    return members


def split_members(ensemble):
    if isinstance(ensemble, CollegialMLP):
        return mlp_members(ensemble)
    return bottleneck_members(ensemble)


def fill_first_layer(module, product, inputs) -> None:
    """Give ``module`` a first-layer weight W1 with ``W1 X = product`` (the minimum-norm one),
    so a module drawn by the product law can be split into ordinary members."""
    from ce_ray.theory.ntk import input_columns

    columns = input_columns(inputs)  # (k, fan_in)
    weight = getattr(module, module.first_weight)
    rows = weight.shape[0]
    products = product.movedim(1, 0).reshape(rows, -1)  # (rows, k)
    solution = products @ torch.linalg.pinv(columns @ columns.T) @ columns
    with torch.no_grad():
        weight.copy_(solution.reshape(weight.shape))
